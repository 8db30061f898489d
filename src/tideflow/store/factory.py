"""Turn a connection string into a store (SPEC §2 connection strings)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

from tideflow.errors import StoreError
from tideflow.store.protocol import Store

__all__ = ["open_store", "redact"]

_SQLITE_PREFIXES = ("sqlite:",)
_POSTGRES_SCHEMES = ("postgresql", "postgres", "psql")
_MYSQL_SCHEMES = ("mysql", "mariadb")


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return re.sub(r":[^:@/]*@", ":***@", url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def sqlite_path(url: str) -> str:
    """The file path (or ``:memory:``) of a ``sqlite:`` connection string."""
    rest = url[len("sqlite:") :]
    if rest in (":memory:", "//:memory:", "///:memory:"):
        return ":memory:"
    if rest.startswith("////"):
        return rest[3:]
    if rest.startswith("///"):
        return rest[3:]
    if rest.startswith("//"):
        raise StoreError(
            f"cannot read SQLite connection string {url!r}: use sqlite:path.db,"
            " sqlite:///relative.db or sqlite:////absolute/path.db"
        )
    if not rest:
        raise StoreError("SQLite connection string has no path: use sqlite:path.db")
    return rest


def open_store(url: str) -> Store:
    """Create the store for ``url``; raises :class:`StoreError` for unknown schemes."""
    if not isinstance(url, str) or not url:
        raise StoreError(f"connection string must be a non-empty string, got {url!r}")
    if url.startswith(_SQLITE_PREFIXES):
        from tideflow.store.sql.sqlite import SqliteStore

        return SqliteStore(sqlite_path(url))
    scheme = url.split(":", 1)[0].lower()
    if scheme in _POSTGRES_SCHEMES:
        try:
            from tideflow.store.sql.postgres import PostgresStore
        except ImportError as exc:
            raise StoreError(
                f"PostgreSQL needs psycopg 3: pip install 'tideflow[postgres]' ({exc})"
            ) from None
        return PostgresStore(url)
    if scheme in _MYSQL_SCHEMES:
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
