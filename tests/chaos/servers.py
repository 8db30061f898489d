"""Restarting the local database server in the middle of a chaos run, and URLs via a proxy.

A restart needs the server on this machine and the rights to restart it (root, with
``pg_ctlcluster`` for PostgreSQL; the running ``mariadbd``/``mysqld`` process for MySQL, stopped
with ``mysqladmin shutdown`` and started again as it was started, with ``start-stop-daemon``).
When that is not possible the restart is skipped and says why. A restart disturbs every other
client of the server, so a chaos run does it once per store, and only under ``CI=true`` or with
``TIDEFLOW_CHAOS_RESTART=1`` (``TIDEFLOW_CHAOS_RESTART=0`` skips it even in CI). Whatever
happens, the server is left running: a failed start is retried.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "")


def via_proxy(url: str, port: int) -> str:
    """``url`` with its host and port replaced by ``127.0.0.1:port``."""
    parts = urlsplit(url)
    userinfo, _, _ = parts.netloc.rpartition("@")
    netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def _answers(connect: Callable[[], Any]) -> bool:
    try:
        conn = connect()
    except Exception:
        return False
    with contextlib.suppress(Exception):
        conn.close()
    return True


def _wait_answers(connect: Callable[[], Any], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _answers(connect):
            return True
        time.sleep(0.2)
    return False


def restart_possible() -> str | None:
    """None when restarts may be tried, else why not."""
    wanted = os.environ.get("TIDEFLOW_CHAOS_RESTART")
    if wanted == "0":
        return "TIDEFLOW_CHAOS_RESTART=0"
    if wanted != "1" and os.environ.get("CI") != "true":
        return "restarts disturb other users of the server: set TIDEFLOW_CHAOS_RESTART=1 (CI does)"
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "not root"
    return None


# --- PostgreSQL --------------------------------------------------------------------------------
def _pg_connect(url: str) -> Callable[[], Any]:
    import psycopg

    return lambda: psycopg.connect(url, autocommit=True, connect_timeout=3)


def restart_postgres(url: str) -> str | None:
    """Restart the local PostgreSQL cluster serving ``url``; None when done, else why not."""
    why = restart_possible()
    if why:
        return why
    host, port = host_port(url, 5432)
    if host not in LOCAL_HOSTS:
        return f"server {host} is not local"
    if not shutil.which("pg_lsclusters") or not shutil.which("pg_ctlcluster"):
        return "no pg_lsclusters/pg_ctlcluster"
    listing = subprocess.run(
        ["pg_lsclusters", "--no-header"], capture_output=True, text=True, timeout=30
    ).stdout
    cluster = None
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2] == str(port) and fields[3].startswith("online"):
            cluster = fields[0], fields[1]
    if cluster is None:
        return f"no online cluster on port {port} in pg_lsclusters"
    version, name = cluster
    cmd = ["pg_ctlcluster", "--skip-systemctl-redirect", version, name]
    try:
        done = subprocess.run(
            [*cmd, "restart"],
            capture_output=True,
            text=True,
            timeout=120,  # fast mode
        )
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctlcluster restart failed: {done.stdout}{done.stderr}")
    finally:
        if not _wait_answers(_pg_connect(url), 60):  # never leave the server stopped
            subprocess.run([*cmd, "start"], capture_output=True, timeout=120)
            if not _wait_answers(_pg_connect(url), 60):
                raise RuntimeError(f"PostgreSQL {version}/{name} does not answer after a restart")
    return None


# --- MySQL / MariaDB ---------------------------------------------------------------------------
def _mysql_connect(url: str) -> Callable[[], Any]:
    import pymysql

    parts = urlsplit(url)
    return lambda: pymysql.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        user=parts.username or "root",
        password=parts.password or "",
        connect_timeout=3,
    )


def _mysql_server_process() -> tuple[int, str, list[str]] | None:
    """(pid, executable, arguments) of the running mariadbd/mysqld, if any."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            if comm not in ("mariadbd", "mysqld"):
                continue
            exe = os.readlink(entry / "exe")
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        return int(entry.name), exe, [a.decode() for a in args[1:] if a]
    return None


def restart_mysql(url: str) -> str | None:
    """Restart the local MariaDB/MySQL server serving ``url``; None when done, else why not."""
    why = restart_possible()
    if why:
        return why
    host, port = host_port(url, 3306)
    if host not in LOCAL_HOSTS:
        return f"server {host} is not local"
    found = _mysql_server_process()
    if found is None:
        return "no mariadbd/mysqld process on this machine"
    pid, exe, args = found
    if exe.endswith(" (deleted)") or not shutil.which("start-stop-daemon"):
        return "cannot start the server again (no start-stop-daemon or executable gone)"
    parts = urlsplit(url)
    connect = _mysql_connect(url)

    def start() -> None:
        subprocess.run(
            [
                "start-stop-daemon",
                "--start",
                "--oknodo",
                "--background",
                "--exec",
                exe,
                "--",
                *args,
            ],
            capture_output=True,
            timeout=60,
        )

    try:
        shutdown = ["mysqladmin", "-h", host or "127.0.0.1", "-P", str(port)]
        shutdown += ["-u", parts.username or "root"]
        if parts.password:
            shutdown.append(f"-p{parts.password}")
        done = subprocess.run([*shutdown, "shutdown"], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            os.kill(pid, 15)  # SIGTERM: a clean shutdown too
        deadline = time.monotonic() + 120
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        start()
        if not _wait_answers(connect, 90):  # never leave the server stopped
            start()
            if not _wait_answers(connect, 90):
                raise RuntimeError(f"{exe} does not answer after a restart")
    return None


def restart_server(kind: str, url: str) -> str | None:
    """Restart the server of ``kind`` ('postgres'/'mysql'); None when done, else why not."""
    if kind == "postgres":
        return restart_postgres(url)
    if kind == "mysql":
        return restart_mysql(url)
    return f"{kind} has no server"
