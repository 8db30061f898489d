"""The schema and migration SQL of each dialect as a script, as ``setup()`` runs it (shown by
``tideflow db sql``).

The statements are the stores' own (``MIGRATIONS`` of ``store/sql/<dialect>.py``), so what a DBA
reviews is what ``tideflow db migrate`` executes; only the bookkeeping rows of
``tideflow_schema`` are spelled here, with the database's clock instead of the migrating host's.
"""

from __future__ import annotations

import importlib
import textwrap
from collections.abc import Mapping, Sequence
from types import ModuleType

from tideflow.errors import StoreError

__all__ = ["DIALECTS", "render"]

DIALECTS = ("sqlite", "postgresql", "mysql")
_EXTRA = {"sqlite": "", "postgresql": "postgres", "mysql": "mysql"}
_FLOAT = {"sqlite": "REAL", "postgresql": "DOUBLE PRECISION", "mysql": "DOUBLE"}
_NOW = {
    "sqlite": "strftime('%s', 'now')",
    "postgresql": "EXTRACT(EPOCH FROM now())",
    "mysql": "UNIX_TIMESTAMP(NOW(6))",
}


def _module(dialect: str) -> ModuleType:
    name = {"sqlite": "sqlite", "postgresql": "postgres", "mysql": "mysql"}[dialect]
    try:
        return importlib.import_module(f"tideflow.store.sql.{name}")
    except ImportError as exc:
        raise StoreError(
            f"the {dialect} statements need its driver: pip install"
            f" 'tideflow[{_EXTRA[dialect]}]' ({exc})"
        ) from None


def render(dialect: str, current: int, where: str) -> str:
    """The SQL that brings a ``dialect`` database from schema version ``current`` to this
    tideflow's, with comments; ``where`` names the database in the header."""
    module = _module(dialect)
    target: int = module.SCHEMA_VERSION
    migrations: Mapping[int, Sequence[str]] = module.MIGRATIONS
    lines = [
        f"-- tideflow schema SQL for {where}",
        f"-- this tideflow's schema version: {target}",
    ]
    if current > target:
        lines.append(
            f"-- the database is at version {current}, newer than this tideflow: upgrade"
            " tideflow; there is nothing to run"
        )
        return "\n".join(lines) + "\n"
    if current == target:
        lines.append("-- the schema is up to date: nothing to run")
        return "\n".join(lines) + "\n"
    lines += _how_it_runs(dialect)
    if dialect == "postgresql":
        lines += ["", "BEGIN;"]
    lines += [
        "",
        "CREATE TABLE IF NOT EXISTS tideflow_schema"
        f" (version INTEGER NOT NULL PRIMARY KEY, applied_at {_FLOAT[dialect]} NOT NULL);",
    ]
    for step in range(current + 1, target + 1):
        lines += ["", f"-- version {step}"]
        for statement in migrations[step]:
            if dialect == "mysql":
                statement = statement.replace("{options}", _mysql_options(module))
            lines.append(textwrap.dedent("        " + statement.strip()).strip() + ";")
        lines.append(
            f"INSERT INTO tideflow_schema (version, applied_at) VALUES ({step}, {_NOW[dialect]});"
        )
    if dialect == "postgresql":
        lines += ["", "COMMIT;"]
    return "\n".join(lines) + "\n"


def _how_it_runs(dialect: str) -> list[str]:
    if dialect == "sqlite":
        return ["-- 'tideflow db migrate' runs these in one BEGIN IMMEDIATE transaction"]
    if dialect == "postgresql":
        return [
            "-- 'tideflow db migrate' runs these in one transaction holding",
            "-- pg_advisory_xact_lock, so concurrent migrations queue; tables go into the",
            "-- connection's current schema (search_path)",
        ]
    return [
        "-- MySQL commits each DDL statement by itself: 'tideflow db migrate' holds GET_LOCK",
        "-- instead, and every CREATE is IF NOT EXISTS so an interrupted run can be repeated.",
        f"-- Table collation: the first of {', '.join(_collations())} that the server has",
        "-- (shown here: the first).",
    ]


def _collations() -> tuple[str, ...]:
    found = getattr(_module("mysql"), "_COLLATIONS", ("utf8mb4_bin",))
    return tuple(found)


def _mysql_options(module: ModuleType) -> str:
    return f"ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE={_collations()[0]}"
