"""Versioned SQLite schemas, on sqlite-utils' migrations, for the stores built on this layer.

A store lists its migrations once, oldest first: ``schema("facefare-gallery", [("0001_initial",
[...statements]), ...])``. :func:`upgrade` applies whatever a file lacks, all under one write lock
(two processes opening the same file never both migrate it), records each step in sqlite-utils'
``_sqlite_migrations`` table, and refuses a file written by a newer FaceFare. The first migration
of every store uses ``IF NOT EXISTS``, so a file from before versioning is adopted as it is.

The bus ledger (``edge.fares.ledger``) keeps its own ``schema_migrations`` table, older than this.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

log = logging.getLogger(__name__)

Step = tuple[str, Sequence[str]]


class SchemaError(RuntimeError):
    """A store's schema cannot be used by this version of FaceFare (the message names the file)."""


def statements(script: str) -> list[str]:
    """The complete SQL statements of ``script`` (triggers' inner semicolons kept together)."""
    out, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            out.append(current.strip())
            current = ""
    if current.strip():
        raise ValueError(f"incomplete SQL statement: {current.strip()[:80]}")
    return out


@dataclass(frozen=True)
class Schema:
    """A store's migration set and the names of its steps (what this version of FaceFare knows)."""

    migrations: Migrations
    steps: tuple[str, ...]


def schema(name: str, steps: Sequence[Step]) -> Schema:
    """A migration set called ``name``: each step's statements run in one transaction, in order."""
    migrations = Migrations(name)
    for step, sql in steps:

        def apply(db: Database, sql: Sequence[str] = sql) -> None:
            for statement in sql:
                db.execute(statement)

        migrations(name=step)(apply)
    return Schema(migrations, tuple(step for step, _ in steps))


def upgrade(conn: sqlite3.Connection, store: Schema, what: str) -> list[str]:
    """Bring the store on ``conn`` (an autocommit connection) to the newest schema; the steps applied."""
    db = Database(conn, recursive_triggers=False)
    migrations = store.migrations
    conn.execute("BEGIN IMMEDIATE")
    try:
        newer = sorted({m.name for m in migrations.applied(db)} - set(store.steps))
        if newer:
            raise SchemaError(f"{what} was written by a newer FaceFare (schema steps {', '.join(newer)}): upgrade")
        pending = [m.name for m in migrations.pending(db)]
        migrations.apply(db)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    for step in pending:
        log.info("%s: applied schema step %s", what, step)
    return pending


def applied(conn: sqlite3.Connection, store: Schema) -> list[str]:
    """The schema steps recorded in the store on ``conn``, oldest first."""
    return [m.name for m in store.migrations.applied(Database(conn, recursive_triggers=False))]
