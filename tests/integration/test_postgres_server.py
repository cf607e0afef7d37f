"""The project's PostgreSQL server: starts on a free loopback port, creates databases, answers queries, stops."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from cloud_sync.devservers.postgres_server import PostgresServer


@pytest.fixture
def pg_workdir() -> Iterator[Path]:
    # Under /tmp: as root the server runs as the OS user postgres, which cannot enter pytest's tmp_path.
    path = Path(tempfile.mkdtemp(prefix="facefare-pg-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_start_create_query_stop(pg_workdir: Path) -> None:
    server = PostgresServer(pg_workdir)
    with server:
        dsn = server.create_database("fares_test")
        with psycopg.connect(dsn) as conn:
            conn.execute("CREATE TABLE fare (fare_id text PRIMARY KEY, amount_minor bigint NOT NULL)")
            conn.execute("INSERT INTO fare VALUES ('f1', 250), ('f2', 125)")
            row = conn.execute("SELECT current_database(), sum(amount_minor) FROM fare").fetchone()
        assert row == ("fares_test", 375)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(dsn.replace("password=", "password=wrong"), connect_timeout=5)
    assert not server.running
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=2)


def test_bad_database_name_is_refused(postgres_server: PostgresServer) -> None:
    with pytest.raises(ValueError, match="database name"):
        postgres_server.create_database("x; drop")


def test_postgres_dsn_is_a_fresh_database(postgres_dsn: str) -> None:
    with psycopg.connect(postgres_dsn) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
    assert tables == (0,)
