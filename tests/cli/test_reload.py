"""``tideflow worker APP --reload``: a supervisor restarts the worker when the app's code changes,
finishing or releasing running attempts first."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from support.wait import wait_for
from tideflow import TaskManager
from tideflow.cli import worker as worker_cli
from tideflow.cli.main import main

pytest.importorskip("watchfiles")

# ``version`` returns the version the module was written with; ``slow`` waits for its gate file
# (the test opens it), then says which version ran it.
APP = """
import os
import time
from pathlib import Path

from tideflow import TaskManager

VERSION = {version!r}
tm = TaskManager(os.environ["TIDEFLOW_DB"], poll_interval=0.02)


@tm.task("version")
def version(task):
    return VERSION


@tm.task("slow", max_retries=5, retry_interval=0)
def slow(task):
    gate = Path(task.payload)
    deadline = time.monotonic() + 120
    while not gate.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the gate never opened")
        time.sleep(0.02)
    return "slow " + VERSION
"""


def write_app(directory: Path, version: str) -> None:
    # A version of another length keeps the source's size apart from the cached bytecode's even
    # within one second of mtime.
    (directory / "reloadapp.py").write_text(textwrap.dedent(APP.format(version=version)))


class Supervisor:
    """``python -m tideflow.cli worker ... --reload`` in ``cwd``, its output in a file."""

    def __init__(self, cwd: Path, *args: str) -> None:
        self.log = cwd / "supervisor.log"
        env = {k: v for k, v in os.environ.items() if k != "TIDEFLOW_DB"}
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tideflow.cli", "worker", *args, "--reload"],
                cwd=cwd,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        assert self.proc.poll() is None, f"supervisor exited early\n{self.output()}"
        return True

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"supervisor did not exit\n{self.output()}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run_to_end(client: TaskManager, sup: Supervisor, name: str, payload: object = None) -> object:
    task_id = client.submit(name, payload)

    def finished() -> bool:
        sup.alive()
        info = client.get_task(task_id)
        return info is not None and info.status in {"completed", "permanently_failed"}

    wait_for(finished, timeout=60, interval=0.05, message=sup.output)
    info = client.get_task(task_id)
    assert info is not None
    assert info.status == "completed", (info, sup.output())
    return info.result


def wait_for_version(client: TaskManager, sup: Supervisor, version: str) -> None:
    """Submit ``version`` tasks until one runs on code of ``version``."""
    wait_for(
        lambda: run_to_end(client, sup, "version") == version,
        timeout=90,
        interval=0.05,
        message=lambda: f"no task ran version {version}\n{sup.output()}",
    )


def running(client: TaskManager, task_id: int) -> bool:
    info = client.get_task(task_id)
    return info is not None and info.status == "running"


@pytest.fixture(autouse=True)
def _no_db_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIDEFLOW_DB", raising=False)


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    write_app(tmp_path, "1")
    return tmp_path


@pytest.mark.slow
def test_reload_restarts_on_change_after_the_running_task_finishes(app_dir: Path) -> None:
    url = f"sqlite:{app_dir / 'r.db'}"
    sup = Supervisor(app_dir, "reloadapp:tm", "--db", url, "--stop-timeout", "60")
    client = TaskManager(url, allow_unregistered=True)
    try:
        assert run_to_end(client, sup, "version") == "1"
        gate = app_dir / "gate"
        slow_id = client.submit("slow", str(gate))
        wait_for(lambda: sup.alive() and running(client, slow_id), timeout=60, interval=0.05)

        write_app(app_dir, "two")
        # The old worker is stopping: it claims nothing new and waits for the slow attempt.
        wait_for(
            lambda: sup.alive() and "restarting the worker" in sup.output(),
            timeout=60,
            interval=0.05,
            message=sup.output,
        )
        assert "reloadapp.py changed" in sup.output()
        assert running(client, slow_id)
        gate.touch()

        wait_for_version(client, sup, "two")
        slow = client.get_task(slow_id)
        assert slow is not None
        assert (slow.status, slow.result, slow.attempt) == ("completed", "slow 1", 1)

        sup.proc.send_signal(signal.SIGTERM)
        assert sup.wait() == 0, sup.output()
        workers = client.get_workers()
        assert len(workers) == 2, workers
        assert {w.status for w in workers} == {"stopped"}, workers
        assert slow.worker_id in {w.worker_id for w in workers}
    finally:
        sup.kill()
        client.close()


@pytest.mark.slow
def test_reload_releases_an_attempt_that_outlasts_the_stop_timeout(app_dir: Path) -> None:
    url = f"sqlite:{app_dir / 'r.db'}"
    sup = Supervisor(app_dir, "reloadapp:tm", "--db", url, "--stop-timeout", "0.2")
    client = TaskManager(url, allow_unregistered=True)
    try:
        assert run_to_end(client, sup, "version") == "1"
        gate = app_dir / "gate"
        slow_id = client.submit("slow", str(gate))
        wait_for(lambda: sup.alive() and running(client, slow_id), timeout=60, interval=0.05)
        first = client.get_task(slow_id)
        assert first is not None

        write_app(app_dir, "two")

        def released() -> bool:
            sup.alive()
            info = client.get_task(slow_id)
            assert info is not None
            return info.status != "running" or info.worker_id != first.worker_id

        wait_for(released, timeout=60, interval=0.02, message=sup.output)
        gate.touch()  # lets the old attempt's thread end too, so its process can exit

        wait_for_version(client, sup, "two")

        def slow_done() -> bool:
            sup.alive()
            info = client.get_task(slow_id)
            return info is not None and info.status == "completed"

        wait_for(slow_done, timeout=60, interval=0.05, message=sup.output)
        slow = client.get_task(slow_id)
        assert slow is not None
        # The released attempt ran again on the new code; the old one's late result was fenced.
        assert slow.result == "slow two", (slow, sup.output())
        assert slow.worker_id != first.worker_id

        sup.proc.send_signal(signal.SIGINT)
        assert sup.wait() == 0, sup.output()
        workers = client.get_workers()
        assert len(workers) == 2, workers
        assert {w.status for w in workers} == {"stopped"}, workers
    finally:
        sup.kill()
        client.close()


@pytest.mark.slow
def test_a_worker_that_fails_to_import_restarts_on_the_next_change(app_dir: Path) -> None:
    url = f"sqlite:{app_dir / 'r.db'}"
    (app_dir / "reloadapp.py").write_text("def broken(:\n")
    sup = Supervisor(app_dir, "reloadapp:tm", "--db", url)
    client = TaskManager(url, allow_unregistered=True)
    try:
        wait_for(
            lambda: sup.alive() and "waiting for a change" in sup.output(),
            timeout=60,
            interval=0.05,
            message=sup.output,
        )
        assert "importing 'reloadapp' failed: SyntaxError" in sup.output()
        write_app(app_dir, "fixed")
        wait_for_version(client, sup, "fixed")
        sup.proc.send_signal(signal.SIGTERM)
        assert sup.wait() == 0, sup.output()
        assert {w.status for w in client.get_workers()} == {"stopped"}
    finally:
        sup.kill()
        client.close()


@pytest.mark.slow
def test_the_worker_stops_when_the_supervisor_dies(app_dir: Path) -> None:
    url = f"sqlite:{app_dir / 'r.db'}"
    sup = Supervisor(app_dir, "reloadapp:tm", "--db", url)
    client = TaskManager(url, allow_unregistered=True)
    try:
        assert run_to_end(client, sup, "version") == "1"
        sup.proc.kill()
        sup.proc.wait()
        wait_for(
            lambda: {w.status for w in client.get_workers()} == {"stopped"},
            timeout=60,
            interval=0.05,
            message=lambda: f"{client.get_workers()}\n{sup.output()}",
        )
        assert "parent process" in sup.output()
    finally:
        sup.kill()
        client.close()


def test_reload_refuses_several_processes(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["worker", "app:tm", "--db", "sqlite::memory:", "--reload", "--processes", "2"])
    assert code == 2
    assert "--reload runs one worker process" in capsys.readouterr().err


def test_reload_dir_needs_reload(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["worker", "app:tm", "--reload-dir", "."])
    assert code == 2
    assert "--reload-dir needs --reload" in capsys.readouterr().err


def test_reload_without_watchfiles_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "watchfiles", None)  # import fails
    code = main(["worker", "app:tm", "--db", "sqlite::memory:", "--reload"])
    assert code == 1
    assert "pip install 'tideflow[reload]'" in capsys.readouterr().err


def test_watch_paths_add_the_apps_package_outside_the_current_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    here, elsewhere = tmp_path / "here", tmp_path / "src"
    (here / "inner").mkdir(parents=True)
    (elsewhere / "farpkg").mkdir(parents=True)
    (elsewhere / "farpkg" / "__init__.py").write_text("raise RuntimeError('never imported')\n")
    monkeypatch.chdir(here)
    monkeypatch.syspath_prepend(str(elsewhere))
    paths = worker_cli._watch_paths("farpkg.tasks:tm", [str(here / "inner")])
    assert paths == [str(here.resolve()), str((elsewhere / "farpkg").resolve())]
    # an installed package (pytest's own) is not the application: only the directory is watched
    assert worker_cli._watch_paths("pytest:main", []) == [str(here.resolve())]
