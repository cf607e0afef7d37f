"""The cloud ledger: every fare of every bus exactly once, as append-only account entries.

One small interface, :class:`CloudLedger`, with two backends picked by the database URL:

* ``sqlite:///path/cloud.db`` (the default, ``<data_dir>/cloud.db``): embedded, for the demo;
* ``postgresql://user@host:port/db``: production and the end-to-end tests (psycopg 3, COPY).

Tables (the same on both):

* ``fares``: one row per fare id (unique), exactly the bus ledger's row plus its service week and
  when and in which message it arrived;
* ``entries``: the money. A ``charge`` entry per fare (its amount, never negative; at most one
  per fare, by a unique index) and ``refund`` entries (negative) from settlement across buses.
  A rider's balance is the sum of their entries; nothing stores a balance;
* ``messages``: the signed ``fares`` messages applied (sender, message id), so a message the
  broker delivers again after a crash is recognised even after a restart;
* ``rejections``: every refused message or fare with its reason (counted per reason);
* ``settlements``: how far settlement has read the fares (its cursor);
* ``buses``: the registry of bus ids and their Ed25519 public keys; ``bus_status``: the latest
  heartbeat of each bus.

``fares``, ``entries``, ``messages``, ``rejections`` and ``settlements`` refuse UPDATE and DELETE
(triggers). Money is integer minor units everywhere.

    >>> led = open_ledger("sqlite:///:memory:")
    >>> led.register_bus("bus-7", "MCowBQYDK2VwAyEA")
    >>> led.bus_keys()
    {'bus-7': 'MCowBQYDK2VwAyEA'}
"""

from __future__ import annotations

import contextlib
import json
import logging
import operator
import sqlite3
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cloud_sync.cloud.settlement import GroupFare, refunds_for, service_week_of
from cloud_sync.protocol import Fare
from cloud_sync.sqlite_schema import schema, upgrade
from edge.fares.record import FARE_COLUMNS
from edge.fares.rules import FaresConfig
from edge.files import private_file

log = logging.getLogger(__name__)

STORED_FARE_COLUMNS = (*FARE_COLUMNS, "service_week", "msg_id", "received_at")
ENTRY_COLUMNS = (
    "fare_id", "kind", "amount_minor", "currency", "rider_id", "bus_id", "service_day", "service_week", "reason",
    "created_at",
)  # fmt: skip
#: A fare's values in FARE_COLUMNS order, as a tuple.
_fare_values = operator.attrgetter(*FARE_COLUMNS)
APPEND_ONLY = ("fares", "entries", "messages", "rejections", "settlements")
#: How many new fares one settlement round (one transaction) covers at most.
SETTLE_WINDOW = 20_000
#: How many rider-weeks one settlement query reads at most.
SETTLE_CHUNK = 2000


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _schema(serial: str, big: str) -> list[str]:
    """The portable DDL; ``serial`` is the auto-increment key type, ``big`` a 64-bit integer."""
    fare_cols = ",\n".join(
        f"{c} {big if c in ('boarded_ms', 'amount_minor', 'base_minor') else 'TEXT'} NOT NULL"
        for c in STORED_FARE_COLUMNS
    )
    return [
        f"""CREATE TABLE IF NOT EXISTS fares (seq {serial}, {fare_cols},
            CHECK (amount_minor >= 0), CHECK (base_minor >= 0), UNIQUE (fare_id))""",
        "CREATE INDEX IF NOT EXISTS fares_rider_week ON fares (rider_id, service_week)",
        "CREATE INDEX IF NOT EXISTS fares_bus_day ON fares (bus_id, service_day)",
        f"""CREATE TABLE IF NOT EXISTS entries (seq {serial},
            fare_id TEXT NOT NULL REFERENCES fares (fare_id),
            kind TEXT NOT NULL CHECK (kind IN ('charge', 'refund')),
            amount_minor {big} NOT NULL,
            currency TEXT NOT NULL, rider_id TEXT NOT NULL, bus_id TEXT NOT NULL,
            service_day TEXT NOT NULL, service_week TEXT NOT NULL, reason TEXT NOT NULL, created_at TEXT NOT NULL,
            CHECK ((kind = 'charge' AND amount_minor >= 0) OR (kind = 'refund' AND amount_minor < 0)))""",
        "CREATE UNIQUE INDEX IF NOT EXISTS entries_one_charge ON entries (fare_id) WHERE kind = 'charge'",
        # Settlement reads a rider-week's refunds; charges are found through fares_rider_week, so
        # only refunds are indexed here (a charge entry costs one index update fewer).
        "DROP INDEX IF EXISTS entries_rider_week",
        "CREATE INDEX IF NOT EXISTS entries_refunds ON entries (rider_id, service_week) WHERE kind = 'refund'",
        f"""CREATE TABLE IF NOT EXISTS messages (seq {serial}, sender TEXT NOT NULL, msg_id TEXT NOT NULL,
            type TEXT NOT NULL, sent_ms {big} NOT NULL, fares {big} NOT NULL, received_at TEXT NOT NULL,
            UNIQUE (sender, msg_id))""",
        f"""CREATE TABLE IF NOT EXISTS rejections (seq {serial}, at TEXT NOT NULL, bus_id TEXT NOT NULL,
            reason TEXT NOT NULL, detail TEXT NOT NULL)""",
        f"""CREATE TABLE IF NOT EXISTS settlements (seq {serial}, up_to_fare_seq {big} NOT NULL,
            groups {big} NOT NULL, refunds {big} NOT NULL, refunded_minor {big} NOT NULL, at TEXT NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS buses (bus_id TEXT PRIMARY KEY, public_key TEXT NOT NULL,
            registered_at TEXT NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS bus_status (bus_id TEXT PRIMARY KEY, online INTEGER NOT NULL,
            outbox_backlog INTEGER NOT NULL, body TEXT NOT NULL, at TEXT NOT NULL)""",
    ]


@dataclass
class IngestResult:
    """What one ``fares`` message did: fares now in the ledger (to acknowledge) and refusals."""

    sender: str
    acked: list[str] = field(default_factory=list)
    new: int = 0
    duplicates: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (fare_id, reason)
    replayed_message: bool = False


@dataclass(frozen=True)
class FaresMessage:
    """A verified ``fares`` message, ready to apply."""

    sender: str
    msg_id: str
    sent_ms: int
    fares: Sequence[Fare]


@dataclass(frozen=True)
class Rejection:
    bus_id: str
    reason: str
    detail: str


@dataclass(frozen=True)
class DayTotal:
    """The cloud's count and sum of one bus's charges on one service day, in one currency."""

    bus_id: str
    service_day: str
    currency: str
    fares: int
    charged_minor: int
    refunded_minor: int


class CloudLedger:
    """Storage of the cloud ledger; subclasses supply the connection and a few SQL details.

    One instance is used by one thread at a time. Every public write is one transaction.
    """

    placeholder = "?"
    #: What the backend raises when a unique index refuses a row.
    duplicate_error: type[Exception] | tuple[type[Exception], ...] = ()
    #: Whether several connections can write at once (PostgreSQL); SQLite has one writer at a time.
    concurrent_writers = False

    def __init__(self, rules: FaresConfig | None = None) -> None:
        self.rules = (rules or FaresConfig()).model_copy(update={"deny": []})

    def is_transient(self, exc: BaseException) -> bool:
        """Whether retrying can fix ``exc``: the database unreachable, locked, out of space for
        now. Anything else (a value the database refuses, a constraint) fails again on retry."""
        return isinstance(exc, OSError | ConnectionError | TimeoutError)

    # -- backend primitives ----------------------------------------------------------------

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> CloudLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        raise NotImplementedError

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise NotImplementedError

    def bulk_insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Insert many rows at once (executemany on SQLite, COPY on PostgreSQL)."""
        if rows:
            marks = ", ".join(self.placeholder for _ in columns)
            self.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)

    def lock_settlement(self) -> None:
        """Hold the settlement lock until the transaction ends (SQLite: BEGIN IMMEDIATE already does)."""

    def lock_ingest(self) -> None:
        """Mark this transaction as an ingest in flight, for :meth:`committed_horizon` (SQLite: one writer)."""

    def committed_horizon(self) -> int:
        """The highest fare ``seq`` below which every fare is committed.

        Writers on several connections commit out of order: a fare numbered 100 may commit after
        one numbered 200. Settlement reads no further than this, or it would step over fare 100.
        With one writer at a time (SQLite) it is simply the highest ``seq``.
        """
        return int(self.execute("SELECT COALESCE(MAX(seq), 0) FROM fares")[0][0])

    def in_list(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        """A ``column IN (...)`` condition and its parameters."""
        return f"{column} IN ({', '.join(self.placeholder for _ in values)})", list(values)

    def _sql(self, sql: str) -> str:
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)

    # -- registry --------------------------------------------------------------------------

    def register_bus(self, bus_id: str, public_key: str) -> None:
        """Register a bus's Ed25519 public key (base64 text); registering again replaces the key."""
        with self.transaction():
            self.execute(self._sql("DELETE FROM buses WHERE bus_id = ?"), [bus_id])
            self.execute(self._sql("INSERT INTO buses (bus_id, public_key, registered_at) VALUES (?, ?, ?)"),
                         [bus_id, public_key.strip(), _now()])  # fmt: skip
        log.info("registered bus %s", bus_id)

    def bus_keys(self) -> dict[str, str]:
        """Bus id -> public key text, for every registered bus."""
        return dict(self.execute("SELECT bus_id, public_key FROM buses ORDER BY bus_id"))  # type: ignore[arg-type]

    def record_status(self, bus_id: str, online: bool, outbox_backlog: int, body: dict[str, Any]) -> None:
        """Keep the latest heartbeat (or last will) of a bus."""
        with self.transaction():
            self.execute(self._sql("DELETE FROM bus_status WHERE bus_id = ?"), [bus_id])
            self.execute(
                self._sql("INSERT INTO bus_status (bus_id, online, outbox_backlog, body, at) VALUES (?, ?, ?, ?, ?)"),
                [bus_id, int(online), outbox_backlog, json.dumps(body, sort_keys=True), _now()],
            )

    def bus_status(self) -> dict[str, dict[str, Any]]:
        rows = self.execute("SELECT bus_id, online, outbox_backlog, body, at FROM bus_status ORDER BY bus_id")
        return {r[0]: {"online": bool(r[1]), "outbox_backlog": r[2], "body": json.loads(r[3]), "at": r[4]}
                for r in rows}  # fmt: skip

    # -- ingest ----------------------------------------------------------------------------

    def ingest(self, messages: Sequence[FaresMessage], rejections: Sequence[Rejection] = ()) -> list[IngestResult]:
        """Apply verified ``fares`` messages and record refusals, all in one transaction.

        A fare id already in the ledger is not applied again: with the same content it is
        acknowledged again (the bus missed the first ack) and counted as a ``replay``; with other
        content it is refused as ``conflict``. A message id already applied is a ``replay`` too.
        Returns one result per message, in order; acknowledge only after this returns.
        """
        try:
            # Fast path: a fare id is new unless the unique index says otherwise, so no lookup.
            return self._ingest(messages, rejections, look_up=False)
        except self.duplicate_error:
            # A fare of the batch is already in the ledger (a bus sent it again after a lost ack):
            # nothing was written; apply the batch again, comparing each fare with the stored one.
            return self._ingest(messages, rejections, look_up=True)

    def _ingest(self, messages: Sequence[FaresMessage], rejections: Sequence[Rejection],
                look_up: bool) -> list[IngestResult]:  # fmt: skip
        results = [IngestResult(m.sender) for m in messages]
        at = _now()
        with self.transaction():
            self.lock_ingest()
            stored: dict[str, tuple[Any, ...]] = {}
            if look_up:  # only on the careful path: the fast path lets the unique index find them
                stored = self._stored_fares(list(dict.fromkeys(f.fare_id for m in messages for f in m.fares)))
            seen_msgs = self._seen_messages(messages)
            fare_rows: list[tuple[Any, ...]] = []
            charge_rows: list[list[Any]] = []
            reject_rows = [[at, r.bus_id, r.reason, r.detail] for r in rejections]
            message_rows: list[list[Any]] = []
            weeks: dict[str, str] = {}
            for msg, res in zip(messages, results, strict=True):
                if (msg.sender, msg.msg_id) in seen_msgs:  # delivered again: nothing in it is applied
                    res.replayed_message = True
                    reject_rows.append([at, msg.sender, "replay", f"message {msg.msg_id} was already applied"])
                    continue
                seen_msgs.add((msg.sender, msg.msg_id))
                message_rows.append([msg.sender, msg.msg_id, "fares", msg.sent_ms, len(msg.fares), at])
                for fare in msg.fares:
                    row = _fare_values(fare)
                    before = stored.get(fare.fare_id)
                    if before is None:
                        week = weeks.get(fare.service_day) or weeks.setdefault(
                            fare.service_day, service_week_of(fare.service_day))
                        fare_rows.append((*row, week, msg.msg_id, at))
                        charge_rows.append([fare.fare_id, "charge", fare.amount_minor, fare.currency, fare.rider_id,
                                            fare.bus_id, fare.service_day, week, fare.reason, at])  # fmt: skip
                        stored[fare.fare_id] = row
                        res.new += 1
                        res.acked.append(fare.fare_id)
                    elif before == row:
                        res.duplicates += 1
                        res.acked.append(fare.fare_id)
                        reject_rows.append([at, msg.sender, "replay", f"fare {fare.fare_id} already settled"])
                    else:
                        res.rejected.append((fare.fare_id, "conflict"))
                        reject_rows.append([at, msg.sender, "conflict",
                                            f"fare {fare.fare_id} differs from the one already settled"])  # fmt: skip
            self.bulk_insert("fares", STORED_FARE_COLUMNS, fare_rows)
            self.bulk_insert("entries", ENTRY_COLUMNS, charge_rows)
            self.bulk_insert("messages", ("sender", "msg_id", "type", "sent_ms", "fares", "received_at"), message_rows)
            self.bulk_insert("rejections", ("at", "bus_id", "reason", "detail"), reject_rows)
        return results

    def record_rejections(self, rejections: Sequence[Rejection]) -> None:
        """Record refused messages (bad signature, schema...) for counting."""
        if rejections:
            with self.transaction():
                at = _now()
                self.bulk_insert("rejections", ("at", "bus_id", "reason", "detail"),
                                 [[at, r.bus_id, r.reason, r.detail] for r in rejections])  # fmt: skip

    def _stored_fares(self, ids: Sequence[str]) -> dict[str, tuple[Any, ...]]:
        """The stored values (FARE_COLUMNS order) of those of ``ids`` already in the ledger."""
        out: dict[str, tuple[Any, ...]] = {}
        for start in range(0, len(ids), 5000):
            cond, params = self.in_list("fare_id", ids[start : start + 5000])
            for r in self.execute(f"SELECT {', '.join(FARE_COLUMNS)} FROM fares WHERE {cond}", params):
                out[r[0]] = tuple(r)
        return out

    def _seen_messages(self, messages: Sequence[FaresMessage]) -> set[tuple[str, str]]:
        if not messages:
            return set()
        cond, params = self.in_list("msg_id", [m.msg_id for m in messages])
        return {(r[0], r[1]) for r in self.execute(f"SELECT sender, msg_id FROM messages WHERE {cond}", params)}

    # -- settlement ------------------------------------------------------------------------

    def settle(self, window_fares: int = SETTLE_WINDOW, max_rounds: int | None = None) -> int:
        """Settle rider-weeks touched by fares that arrived since the last settlement.

        Each round takes the next ``window_fares`` fares after the settlement cursor, reads every
        fare and refund of the rider-weeks they touch, prices those again across buses
        (:mod:`cloud_sync.cloud.settlement`) and appends the refunds still owed, in one transaction,
        until all is settled or ``max_rounds`` ran. Returns the number of refund entries written.
        Idempotent: running it again with no new fares writes nothing.
        """
        written = 0
        rounds = 0
        horizon = self.committed_horizon()
        while max_rounds is None or rounds < max_rounds:
            rounds += 1
            with self.transaction():
                self.lock_settlement()  # two settlers at once would refund twice
                done = self.execute("SELECT COALESCE(MAX(up_to_fare_seq), 0) FROM settlements")[0][0]
                up_to = self.execute(
                    self._sql(f"SELECT MAX(seq) FROM (SELECT seq FROM fares WHERE seq > ? AND seq <= ? ORDER BY seq "
                              f"LIMIT {int(window_fares)}) AS w"),
                    [done, horizon],
                )[0][0]  # fmt: skip
                if up_to is None:
                    return written
                groups = sorted(self.execute(
                    self._sql("SELECT DISTINCT rider_id, currency, service_week FROM fares WHERE seq > ? AND seq <= ?"),
                    [done, up_to],
                ))  # fmt: skip
                refunds: list[list[Any]] = []
                for start in range(0, len(groups), SETTLE_CHUNK):
                    refunds += self._settle_groups(groups[start : start + SETTLE_CHUNK])  # type: ignore[arg-type]
                self.bulk_insert("entries", ENTRY_COLUMNS, refunds)
                self.execute(
                    self._sql("INSERT INTO settlements (up_to_fare_seq, groups, refunds, refunded_minor, at) "
                              "VALUES (?, ?, ?, ?, ?)"),
                    [up_to, len(groups), len(refunds), -sum(r[2] for r in refunds), _now()],
                )  # fmt: skip
            written += len(refunds)
            if refunds:
                log.info("settlement: %d rider-weeks, %d refunds", len(groups), len(refunds))
        return written

    def _settle_groups(self, groups: Sequence[tuple[str, str, str]]) -> list[list[Any]]:
        riders = sorted({g[0] for g in groups})
        weeks = sorted({g[2] for g in groups})
        wanted = set(groups)
        rc, rp = self.in_list("rider_id", riders)
        wc, wp = self.in_list("service_week", weeks)
        refunded: dict[str, int] = defaultdict(int)
        for fid, amount in self.execute(
            f"SELECT fare_id, SUM(amount_minor) FROM entries WHERE kind = 'refund' AND {rc} AND {wc} GROUP BY fare_id",
            rp + wp,
        ):
            refunded[fid] = -int(amount)
        members: dict[tuple[str, str, str], list[GroupFare]] = defaultdict(list)
        info: dict[str, tuple[Any, ...]] = {}
        for fid, bus, rider, conc, bms, day, amount, base, cur, week, rec in self.execute(
            "SELECT fare_id, bus_id, rider_id, concession, boarded_ms, service_day, amount_minor, base_minor, "
            f"currency, service_week, recorded_at FROM fares WHERE {rc} AND {wc}",
            rp + wp,
        ):
            key = (rider, cur, week)
            if key in wanted:
                members[key].append(GroupFare(fid, bus, conc, int(bms), day, int(amount), int(base), refunded[fid],
                                              rec))  # fmt: skip
                info[fid] = (cur, rider, bus, day, week)
        at = _now()
        rows: list[list[Any]] = []
        for key in sorted(members):
            for r in refunds_for(self.rules, members[key]):
                cur, rider, bus, day, week = info[r.fare_id]
                rows.append([r.fare_id, "refund", -r.amount_minor, cur, rider, bus, day, week, r.reason, at])
        return rows

    # -- reading ---------------------------------------------------------------------------

    def unsettled(self) -> int:
        """Fares that arrived after the last settlement round."""
        done = self.execute("SELECT COALESCE(MAX(up_to_fare_seq), 0) FROM settlements")[0][0]
        return int(self.execute(self._sql("SELECT COUNT(*) FROM fares WHERE seq > ?"), [done])[0][0])

    def fare_count(self) -> int:
        return int(self.execute("SELECT COUNT(*) FROM fares")[0][0])

    def entries(self, rider_id: str | None = None) -> list[dict[str, Any]]:
        """Entries in the order they were written (optionally one rider's)."""
        sql = f"SELECT seq, {', '.join(ENTRY_COLUMNS)} FROM entries"
        params: list[Any] = []
        if rider_id is not None:
            sql, params = sql + self._sql(" WHERE rider_id = ?"), [rider_id]
        return [dict(zip(("seq", *ENTRY_COLUMNS), r, strict=True)) for r in self.execute(sql + " ORDER BY seq", params)]

    def balances(self) -> dict[tuple[str, str], int]:
        """(rider, currency) -> sum of the rider's entries (what they paid, net of refunds)."""
        rows = self.execute("SELECT rider_id, currency, SUM(amount_minor) FROM entries GROUP BY rider_id, currency")
        return {(r[0], r[1]): int(r[2]) for r in rows}

    def day_totals(self, bus_id: str | None = None) -> list[DayTotal]:
        """Per bus, service day and currency: fares, charges and refunds in the cloud."""
        where, params = ("", []) if bus_id is None else (self._sql(" WHERE bus_id = ?"), [bus_id])
        rows = self.execute(
            "SELECT bus_id, service_day, currency, SUM(CASE WHEN kind = 'charge' THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN kind = 'charge' THEN amount_minor ELSE 0 END), "
            "SUM(CASE WHEN kind = 'refund' THEN -amount_minor ELSE 0 END) "
            f"FROM entries{where} GROUP BY bus_id, service_day, currency ORDER BY bus_id, service_day, currency",
            params,
        )
        return [DayTotal(r[0], r[1], r[2], int(r[3]), int(r[4]), int(r[5])) for r in rows]

    def rejection_counts(self) -> dict[str, int]:
        """Refusals so far per reason."""
        return {r[0]: int(r[1]) for r in self.execute("SELECT reason, COUNT(*) FROM rejections GROUP BY reason")}

    def fares_of_bus(self, bus_id: str) -> dict[str, dict[str, Any]]:
        """Every fare of a bus in the cloud, by fare id (for reconciliation)."""
        cols = ", ".join(FARE_COLUMNS)
        rows = self.execute(self._sql(f"SELECT {cols} FROM fares WHERE bus_id = ?"), [bus_id])
        return {r[0]: dict(zip(FARE_COLUMNS, r, strict=True)) for r in rows}


# -- SQLite --------------------------------------------------------------------------------


#: The SQLite backend's schema, step by step (cloud_sync.sqlite_schema); add steps, never edit one.
SQLITE_MIGRATIONS = schema(
    "facefare-cloud-ledger",
    [
        (
            "0001_initial",
            [
                *_schema("INTEGER PRIMARY KEY", "INTEGER"),
                *(
                    f"CREATE TRIGGER IF NOT EXISTS {table}_no_{op.lower()} BEFORE {op} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
                    for table in APPEND_ONLY
                    for op in ("UPDATE", "DELETE")
                ),
            ],
        )
    ],
)


class SqliteLedger(CloudLedger):
    """The embedded backend: one SQLite file in WAL mode, ``synchronous=FULL``."""

    duplicate_error = sqlite3.IntegrityError

    def __init__(self, path: str | Path, rules: FaresConfig | None = None) -> None:
        super().__init__(rules)
        self.path = str(path)
        private_file(self.path, "cloud ledger")  # every rider's fares: owner only (0600)
        self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA busy_timeout = 10000")
        if self.path != ":memory:":
            self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = FULL")
        self.conn.execute("PRAGMA foreign_keys = ON")
        upgrade(self.conn, SQLITE_MIGRATIONS, f"cloud ledger {self.path}")

    def close(self) -> None:
        self.conn.close()

    def is_transient(self, exc: BaseException) -> bool:
        # OperationalError: locked, busy, disk I/O, full: the database itself may recover.
        return isinstance(exc, sqlite3.OperationalError) or super().is_transient(exc)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        if self.conn.in_transaction:  # nested: part of the outer transaction
            yield
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.conn.execute(sql, list(params)).fetchall()

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self.conn.executemany(sql, rows)


# -- PostgreSQL ----------------------------------------------------------------------------


class PostgresLedger(CloudLedger):
    """The production backend (psycopg 3): COPY for batches, triggers for append-only tables."""

    placeholder = "%s"
    concurrent_writers = True

    def __init__(self, dsn: str, rules: FaresConfig | None = None) -> None:
        import psycopg

        super().__init__(rules)
        self.duplicate_error = psycopg.errors.UniqueViolation
        self.dsn = dsn
        self.conn = psycopg.connect(dsn, autocommit=True)
        with self.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(60061)")  # one migrating process at a time
            for stmt in _schema("BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", "BIGINT"):
                self.conn.execute(stmt)
            self.conn.execute(
                "CREATE OR REPLACE FUNCTION facefare_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
                "BEGIN RAISE EXCEPTION '% is append-only', TG_TABLE_NAME; END $$"
            )
            for table in APPEND_ONLY:
                self.conn.execute(
                    f"CREATE OR REPLACE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON {table} "
                    "FOR EACH STATEMENT EXECUTE FUNCTION facefare_append_only()"
                )

    def close(self) -> None:
        self.conn.close()

    def is_transient(self, exc: BaseException) -> bool:
        import psycopg

        # OperationalError: the server went away, shut down, ran out of space, a lock timed out.
        return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError) or super().is_transient(exc)

    def _live(self) -> Any:
        """The connection, made again if the server restarted or the network dropped."""
        if self.conn.broken or self.conn.closed:
            import psycopg

            log.warning("reconnecting to the cloud ledger database")
            self.conn = psycopg.connect(self.dsn, autocommit=True)
        return self.conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        with self._live().transaction():
            yield

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cur = self._live().execute(sql, list(params))
        return cur.fetchall() if cur.description is not None else []

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            with self.conn.cursor() as cur:
                cur.executemany(sql, rows)  # type: ignore[arg-type]

    def bulk_insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            with self.conn.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)

    def in_list(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        return f"{column} = ANY(%s)", [list(values)]

    def lock_settlement(self) -> None:
        self.conn.execute("SELECT pg_advisory_xact_lock(60062)")

    def lock_ingest(self) -> None:
        self.conn.execute("SELECT pg_advisory_xact_lock_shared(60063)")  # shared: writers run side by side

    def committed_horizon(self) -> int:
        with self.transaction():
            # Exclusive: waits until every ingest transaction in flight has committed (or rolled
            # back); ingests that start meanwhile wait behind it, so none holds a lower seq.
            self.conn.execute("SELECT pg_advisory_xact_lock(60063)")
            return super().committed_horizon()


def open_ledger(url: str, rules: FaresConfig | None = None) -> CloudLedger:
    """The cloud ledger at ``url``: ``sqlite:///path`` (or a plain path), ``postgresql://...`` or a
    libpq ``key=value`` conninfo string."""
    if url.startswith(("postgresql://", "postgres://")) or ("://" not in url and "=" in url):
        return PostgresLedger(url, rules)
    if url.startswith("sqlite:///"):
        return SqliteLedger(url.removeprefix("sqlite:///") or ":memory:", rules)
    if "://" in url:
        raise ValueError(f"unsupported database URL {url!r}: use sqlite:///path or postgresql://...")
    return SqliteLedger(url, rules)
