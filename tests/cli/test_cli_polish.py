"""Command-line polish (issue 14): quiet broken pipes, fast failure on an unreachable server,
``tasks submit``, ``db sql`` and shell completion."""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tideflow import TaskManager
from tideflow.cli import common
from tideflow.cli.main import EXIT_BROKEN_PIPE, build_parser, main

pytest.importorskip("psycopg")
pytest.importorskip("pymysql")


@pytest.fixture(autouse=True)
def _no_db_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIDEFLOW_DB", raising=False)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:{tmp_path / 'tasks.db'}"
    TaskManager(url).setup()
    return url


# --- piping into head --------------------------------------------------------------------------
def test_output_piped_into_a_closed_reader_ends_quietly(db: str) -> None:
    tm = TaskManager(db, allow_unregistered=True)
    tm.submit_many([("email", {"n": i}) for i in range(300)])
    tm.close()
    # the reader reads one line and goes away, like `tideflow tasks list | head -1`
    command = f"{sys.executable} -m tideflow.cli tasks list --db {db} --limit 0 --json | head -n 1"
    proc = subprocess.run(
        ["bash", "-c", command + '; echo "exit ${PIPESTATUS[0]}" >&2'],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.stdout.count("\n") == 1
    assert json.loads(proc.stdout)["name"] == "email"
    assert "Traceback" not in proc.stderr
    assert proc.stderr == f"exit {EXIT_BROKEN_PIPE}\n"  # and nothing else


# --- unreachable servers -----------------------------------------------------------------------
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never says a word (a hung server)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            accepted.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


@pytest.mark.parametrize("scheme", ["postgresql", "mysql"])
def test_a_refused_connection_fails_at_once_with_the_redacted_url(
    scheme: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"{scheme}://ana:s3cret@127.0.0.1:{_closed_port()}/shop"
    code, _, err = run(capsys, "tasks", "list", "--db", url)
    assert code == 1
    assert f"cannot connect to {scheme}://ana:***@127.0.0.1:" in err
    assert "s3cret" not in err
    assert "refused" in err.lower()


@pytest.mark.parametrize("scheme", ["postgresql", "mysql"])
def test_a_server_that_never_answers_fails_after_the_connect_timeout(
    scheme: str,
    silent_server: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(common, "CONNECT_TIMEOUT", 2.0)
    url = f"{scheme}://ana:s3cret@127.0.0.1:{silent_server}/shop"
    code, _, err = run(capsys, "stats", "--db", url)
    assert code == 1
    assert f"cannot connect to {scheme}://ana:***@127.0.0.1:{silent_server}/shop within 2s" in err
    assert "s3cret" not in err


@pytest.mark.parametrize("server", ["postgres", "mysql"])
def test_a_login_the_server_refuses_names_the_cause(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from conftest import SERVERS

    url = SERVERS[server].url()  # skips when the server is not here
    scheme, rest = url.split("://", 1)
    bad = f"{scheme}://tideflow_nobody:wr0ng@{rest.split('@', 1)[-1]}"
    code, _, err = run(capsys, "tasks", "list", "--db", bad)
    assert code == 1
    assert f"cannot connect to {scheme}://tideflow_nobody:***@" in err
    assert "wr0ng" not in err


@pytest.mark.parametrize("server", ["postgres", "mysql"])
def test_a_reachable_server_passes_the_check(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from conftest import SERVERS

    url = SERVERS[server].url()
    assert run(capsys, "db", "migrate", "--db", url)[0] == 0
    code, out, err = run(capsys, "tasks", "submit", "x", "--db", url)
    assert code == 0, err
    code, out, err = run(capsys, "tasks", "list", "--db", url)
    assert code == 0, err
    assert "1-1 of 1 task(s)" in out


# --- tasks submit ------------------------------------------------------------------------------
def test_tasks_submit_prints_the_id_and_stores_the_options(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        capsys,
        "tasks",
        "submit",
        "send_email",
        "--db",
        db,
        "--payload",
        '{"to": "a@example.com"}',
        "--priority",
        "5",
        "--tag",
        "mail",
        "--max-retries",
        "7",
        "--timeout",
        "12.5",
        "--retry-backoff",
        "exponential",
        "--requires",
        "smtp, eu",
        "--delay",
        "60",
    )
    assert code == 0, err
    task_id = int(out)
    tm = TaskManager(db, allow_unregistered=True)
    try:
        task = tm.get_task(task_id)
        assert task is not None
        assert (task.name, task.payload, task.priority, task.tag) == (
            "send_email",
            {"to": "a@example.com"},
            5,
            "mail",
        )
        assert (task.max_retries, task.timeout, task.retry_backoff) == (7, 12.5, "exponential")
        assert list(task.requires) == ["eu", "smtp"]
        assert task.next_run_time is not None
        assert task.next_run_time > task.created_at
    finally:
        tm.close()


def test_tasks_submit_reads_stdin_dedupes_and_prints_json(db: str) -> None:
    def submit(*extra: str) -> dict[str, object]:
        proc = subprocess.run(
            [
                *(sys.executable, "-m", "tideflow.cli", "tasks", "submit", "report", "--db", db),
                *("--payload", "-", "--unique-key", "weekly", "--json", *extra),
            ],
            input='[1, 2, "three"]',
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        data: dict[str, object] = json.loads(proc.stdout)
        return data

    first = submit()
    again = submit("--run-at", "2030-01-01T09:00:00+01:00")
    assert first["id"] == again["id"]  # the open task with the key
    assert (first["name"], first["status"]) == ("report", "pending")
    tm = TaskManager(db, allow_unregistered=True)
    try:
        task = tm.get_task(int(str(first["id"])))
        assert task is not None
        assert task.payload == [1, 2, "three"]
    finally:
        tm.close()


def test_tasks_submit_run_at(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, "tasks", "submit", "x", "--db", db, "--run-at", "2030-01-01T08:00:00Z"
    )
    assert code == 0, err
    tm = TaskManager(db, allow_unregistered=True)
    try:
        task = tm.get_task(int(out))
        assert task is not None
        assert task.next_run_time == datetime(2030, 1, 1, 8, tzinfo=UTC)
    finally:
        tm.close()


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["--payload", "{nope"], 2, "--payload is not JSON"),
        (["--run-at", "2030-01-01T09:00:00"], 2, "has no UTC offset"),
        (["--priority", "50"], 1, "'priority' must be between -20 and 20"),
        (["--delay", "1", "--run-at", "2030-01-01T09:00:00Z"], 1, "not both"),
    ],
)
def test_tasks_submit_refuses_bad_input_and_writes_nothing(
    db: str, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str
) -> None:
    got, _, err = run(capsys, "tasks", "submit", "x", "--db", db, *argv)
    assert got == code
    assert message in err
    tm = TaskManager(db, allow_unregistered=True)
    try:
        assert tm.query_tasks().total == 0
    finally:
        tm.close()


# --- db sql ------------------------------------------------------------------------------------
def _normalised_schema(path: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name"
        ).fetchall()
        return [(name, " ".join(sql.split())) for name, sql in rows]
    finally:
        conn.close()


def test_db_sql_for_sqlite_builds_the_schema_migrate_builds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, sql, err = run(capsys, "db", "sql", "--dialect", "sqlite")
    assert code == 0, err
    reviewed = tmp_path / "reviewed.db"
    conn = sqlite3.connect(reviewed)
    conn.executescript(sql)
    conn.close()
    migrated = tmp_path / "migrated.db"
    assert run(capsys, "db", "migrate", "--db", f"sqlite:{migrated}")[0] == 0
    assert _normalised_schema(reviewed) == _normalised_schema(migrated)
    # and the database the reviewed SQL built is one tideflow accepts as up to date
    assert run(capsys, "db", "sql", "--db", f"sqlite:{reviewed}")[1].endswith(
        "-- the schema is up to date: nothing to run\n"
    )
    tm = TaskManager(f"sqlite:{reviewed}", allow_unregistered=True)
    try:
        tm.submit("x", 1)
        assert tm.query_tasks().total == 1
    finally:
        tm.close()


def test_db_sql_with_a_database_prints_only_what_it_still_needs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "old.db"
    code, sql, _ = run(capsys, "db", "sql", "--dialect", "sqlite")
    version_1 = sql.split("-- version 2")[0]
    conn = sqlite3.connect(path)
    conn.executescript(version_1)
    conn.close()
    code, out, err = run(capsys, "db", "sql", "--db", f"sqlite:{path}")
    assert code == 0, err
    assert "(schema version 1)" in out
    assert "-- version 2" in out
    assert "-- version 1" not in out
    assert "CREATE TABLE tideflow_leases" in out
    assert "CREATE TABLE tideflow_tasks" not in out
    assert "ALTER TABLE tideflow_tasks ADD COLUMN trace_context TEXT;" in out  # version 3


@pytest.mark.parametrize("dialect", ["postgresql", "mysql"])
def test_db_sql_prints_each_dialects_statements(
    dialect: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "db", "sql", "--dialect", dialect)
    assert code == 0, err
    for table in ("tideflow_schema", "tideflow_tasks", "tideflow_leases"):
        assert f"CREATE TABLE IF NOT EXISTS {table}" in out or f"CREATE TABLE {table}" in out
    assert "{options}" not in out
    assert out.count("INSERT INTO tideflow_schema") == 5
    assert "ADD COLUMN trace_context TEXT" in out
    assert "tideflow_task_counts" in out  # version 4: the kept counts, filled from the tasks


def test_db_sql_refuses_both_sources(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "db", "sql", "--db", db, "--dialect", "sqlite")
    assert code == 2
    assert "not both" in err


def test_db_recount_prints_what_it_corrected(
    db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tm = TaskManager(db, allow_unregistered=True)
    try:
        tm.submit_many([("x", None)] * 3)
    finally:
        tm.close()
    code, out, err = run(capsys, "db", "recount", "--db", db)
    assert (code, out) == (0, "the kept counts agree with the tasks table\n"), err
    conn = sqlite3.connect(tmp_path / "tasks.db")
    with conn:  # a writer that does not keep the counts
        conn.execute("DELETE FROM tideflow_tasks WHERE id = (SELECT MIN(id) FROM tideflow_tasks)")
    conn.close()

    code, out, err = run(capsys, "db", "recount", "--db", db)

    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "KEPT", "COUNTED"]
    assert lines[1].split() == ["x", "pending", "3", "2"]
    assert lines[-1] == "corrected 1 count(s)"
    tm = TaskManager(db)
    try:
        assert tm.get_task_stats() == [{"name": "x", "status": "pending", "count": 2}]
    finally:
        tm.close()


# --- shell completion --------------------------------------------------------------------------
def _bash_complete(script: str, *words: str) -> list[str]:
    line = " ".join(words)
    program = (
        f"{script}\nCOMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _tideflow;"
        ' printf "%s\\n" "${COMPREPLY[@]}"'
    )
    proc = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", program],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return proc.stdout.split()


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completion_completes_commands_options_and_choices(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, script, _ = run(capsys, "completion", "bash")
    assert code == 0
    assert _bash_complete(script, "tideflow", "ta") == ["tasks"]
    assert _bash_complete(script, "tideflow", "tasks", "s") == ["submit", "show"]
    assert "--status" in _bash_complete(script, "tideflow", "tasks", "list", "--")
    assert _bash_complete(script, "tideflow", "tasks", "list", "--status", "perm") == [
        "permanently_failed"
    ]
    assert _bash_complete(script, "tideflow", "db", "sql", "--dialect", "p") == ["postgresql"]
    assert _bash_complete(script, "tideflow", "completion", "f") == ["fish"]


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_completion_scripts_parse(
    shell: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, script, _ = run(capsys, "completion", shell)
    assert code == 0
    assert "tasks" in script
    assert "unique-key" in script
    exe = shutil.which(shell)
    if exe is None:
        return  # the script is generated; the shell is not here to parse it
    proc = subprocess.run([exe, "-n"], input=script, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_completion_covers_every_command() -> None:
    from tideflow.cli.completion import command_tree

    tree = command_tree(build_parser())
    assert {"tasks submit", "db sql", "completion", "worker", "dashboard"} <= set(tree)
    assert "--pod-id" in tree["worker"][1]


def test_help_lists_the_new_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--help")[0] == 0
    out = run(capsys, "tasks", "--help")[1]
    assert "submit" in out
