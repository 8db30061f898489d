"""Turn a connection string into a store (SPEC §2 connection strings)."""

from __future__ import annotations

from tideflow.errors import StoreError
from tideflow.store.protocol import Store
from tideflow.store.url import backend_of, check_server_url, redact, sqlite_path

# redact and sqlite_path are re-exported for code that still imports them from here
__all__ = ["open_store", "redact", "sqlite_path"]


def open_store(url: str) -> Store:
    """Create the store for ``url``; raises :class:`StoreError` for unknown schemes."""
    if not isinstance(url, str) or not url:
        raise StoreError(f"connection string must be a non-empty string, got {url!r}")
    backend = backend_of(url)
    if backend == "sqlite":
        from tideflow.store.sql.sqlite import SqliteStore

        return SqliteStore(sqlite_path(url))
    if backend in ("postgres", "mysql"):
        check_server_url(url)
    if backend == "postgres":
        try:
            from tideflow.store.sql.postgres import PostgresStore
        except ImportError as exc:
            raise StoreError(
                f"PostgreSQL needs psycopg 3: pip install 'tideflow[postgres]' ({exc})"
            ) from None
        return PostgresStore(url)
    if backend == "mysql":
        try:
            from tideflow.store.sql.mysql import MysqlStore
        except ImportError as exc:
            raise StoreError(
                f"MySQL/MariaDB needs PyMySQL: pip install 'tideflow[mysql]' ({exc})"
            ) from None
        return MysqlStore(url)
    raise StoreError(
        f"unknown connection string {redact(url)!r}: expected sqlite:..., postgresql://..."
        " or mysql://..."
    )
