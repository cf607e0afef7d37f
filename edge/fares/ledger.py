"""The bus's offline fare ledger: one SQLite file, written through sqlite-utils.

The bus may run for days without network, so this file is the only record of what riders were
charged until the cloud acknowledges it. It is built to survive power cuts and full disks:

* **Durable**: WAL journal with ``synchronous=FULL`` - a charge is on disk before
  :meth:`Ledger.charge` returns, and only then may the rider be told they paid.
* **Append-only**: ``fares``, ``acks`` and ``deny_events`` refuse UPDATE and DELETE (triggers).
  Balances are views over the fares, never stored numbers that could drift.
* **Exactly once**: every fare has an id; recording the same id again charges nothing and
  returns the original decision (see :func:`fare_id_for`).
* **Outbox**: each fare is queued in ``outbox`` in the same transaction as the fare. A row
  leaves the outbox only through :meth:`Ledger.ack`, which records the acknowledgement as an
  event in ``acks`` first (a trigger refuses any other delete).
* **Versioned schema**: ``schema_migrations`` lists the applied versions; each migration runs
  in its own transaction, so a power cut mid-migration leaves the previous version.
* **Money**: integers in minor units (``*_minor`` columns of STRICT tables) with a currency code.

Example::

    >>> from datetime import datetime, timezone
    >>> from edge.fares.rules import FaresConfig
    >>> ledger = Ledger(":memory:", FaresConfig(routes={"12": 250}), bus_id="bus-7")
    >>> at = datetime(2025, 3, 3, 8, 0, tzinfo=timezone.utc)
    >>> d = ledger.charge("rider-1", "12", at, trip_id="12-0800")
    >>> d.outcome.value, d.amount_minor, d.rider_message
    ('charged', 250, 'Paid EUR 2.50. Have a good trip!')
    >>> ledger.charge("rider-1", "12", at, trip_id="12-0800").replayed  # same boarding again
    True
    >>> ledger.balance("rider-1").charged_minor, len(ledger.outbox())
    (250, 1)
    >>> ledger.ack([d.fare_id]), len(ledger.outbox())
    (1, 0)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlite_utils import Database

from edge.fares import rules as fares
from edge.fares.record import FARE_COLUMNS, ID_PATTERN, epoch_ms, fare_id_for, from_epoch_ms, rules_digest
from edge.fares.rules import Boarding, FaresConfig, Outcome, PastFare, Quote, Reason, RiderState
from edge.files import private_file

log = logging.getLogger(__name__)

#: Namespace of the deterministic fare ids (uuid5); never change it, or replays stop matching.
#: How far around a boarding the rider's fares are read: a service week plus the transfer window.
HISTORY_SPAN = timedelta(days=8)
MIN_SQLITE = (3, 37, 0)  # STRICT tables
#: Charges are refused when less than this is free on the ledger's disk (see Ledger._check_free_space).
DEFAULT_MIN_FREE_BYTES = 8 * 1024 * 1024
#: A wall clock further than this from the monotonic record is a step (see Ledger._trusted_time).
CLOCK_STEP_TOLERANCE = timedelta(minutes=2)
#: The WAL is truncated back to this size after a checkpoint.
WAL_LIMIT_BYTES = 4 * 1024 * 1024


class LedgerConfig(BaseModel):
    """The ``[ledger]`` section: where the bus keeps its fares and who the bus is."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    path: Path | None = Field(
        None, description="SQLite file; default <data_dir>/ledger.db; a relative path is under data_dir"
    )
    bus_id: str = Field(
        default_factory=socket.gethostname,
        pattern=ID_PATTERN,
        description="This bus, in fare ids and MQTT topics (default: hostname): letters, digits, '_.-', at most 64",
    )
    max_bytes: int | None = Field(
        None,
        ge=65536,
        description="Refuse new charges once the database file reaches this size (the WAL adds up to 4 MiB); "
        "null = until the disk is full",
    )
    busy_timeout_ms: int = Field(5000, ge=0, description="How long a write waits for another process's lock")
    min_free_bytes: int = Field(
        DEFAULT_MIN_FREE_BYTES, ge=0, description="Refuse new charges when less than this is free on the ledger's disk"
    )

    def resolve_path(self, data_dir: Path) -> Path:
        """The ledger file for a process whose state lives in ``data_dir``."""
        if self.path is None:
            return Path(data_dir).joinpath("ledger.db")
        return self.path if self.path.is_absolute() else Path(data_dir).joinpath(self.path)


class LedgerError(RuntimeError):
    """The ledger file cannot be used (missing, wrong schema version)."""


class LedgerUnavailable(LedgerError):
    """The ledger cannot store anything right now (disk full, I/O error, locked)."""


@dataclass(frozen=True)
class FareDecision:
    """What :meth:`Ledger.charge` decided, once it is safely on disk.

    ``outcome`` is charged (a fare is recorded, perhaps for 0), duplicate or refused;
    ``rider_message`` is what the door tells the rider; ``replayed`` is True when this fare id
    was already recorded and the original decision is returned.
    """

    fare_id: str
    outcome: Outcome
    amount_minor: int
    currency: str
    reason: Reason
    rider_message: str
    replayed: bool = False

    @property
    def may_board(self) -> bool:
        return self.outcome is not Outcome.REFUSED


@dataclass(frozen=True)
class Balance:
    """A rider's balance, derived from their fares: never stored, never overwritten."""

    rider_id: str
    currency: str
    boardings: int
    charged_minor: int
    unconfirmed_minor: int


@dataclass(frozen=True)
class Total:
    """Totals of one group (a day, route or rider) in one currency."""

    key: str
    currency: str
    boardings: int
    paid_boardings: int
    charged_minor: int


GroupBy = Literal["day", "route", "rider"]
GROUP_COLUMNS: dict[str, str] = {"day": "service_day", "route": "route_id", "rider": "rider_id"}


# -- schema --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


def _append_only(table: str) -> tuple[str, ...]:
    return tuple(
        f"CREATE TRIGGER {table}_no_{op.lower()} BEFORE {op} ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
        for op in ("UPDATE", "DELETE")
    )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "fares, outbox, acks, deny list",
        (
            """CREATE TABLE fares (
                seq INTEGER PRIMARY KEY,
                fare_id TEXT NOT NULL UNIQUE,
                bus_id TEXT NOT NULL,
                trip_id TEXT NOT NULL,
                route_id TEXT NOT NULL,
                rider_id TEXT NOT NULL,
                concession TEXT NOT NULL,
                boarded_at TEXT NOT NULL,
                boarded_ms INTEGER NOT NULL,
                service_day TEXT NOT NULL,
                amount_minor INTEGER NOT NULL CHECK (amount_minor >= 0),
                base_minor INTEGER NOT NULL CHECK (base_minor >= 0),
                currency TEXT NOT NULL CHECK (length(currency) = 3),
                reason TEXT NOT NULL,
                rules_digest TEXT NOT NULL,
                recorded_at TEXT NOT NULL
            ) STRICT""",
            "CREATE INDEX fares_rider_time ON fares (rider_id, boarded_ms)",
            "CREATE INDEX fares_day ON fares (service_day)",
            *_append_only("fares"),
            """CREATE TABLE outbox (
                fare_id TEXT PRIMARY KEY REFERENCES fares (fare_id),
                queued_at TEXT NOT NULL,
                payload TEXT NOT NULL
            ) STRICT""",
            """CREATE TABLE acks (
                seq INTEGER PRIMARY KEY,
                fare_id TEXT NOT NULL UNIQUE REFERENCES fares (fare_id),
                acked_at TEXT NOT NULL
            ) STRICT""",
            *_append_only("acks"),
            """CREATE TRIGGER outbox_leaves_only_when_acked BEFORE DELETE ON outbox
                WHEN NOT EXISTS (SELECT 1 FROM acks WHERE acks.fare_id = OLD.fare_id)
                BEGIN SELECT RAISE(ABORT, 'an outbox row leaves only when the cloud acknowledges it'); END""",
            """CREATE TABLE deny_events (
                seq INTEGER PRIMARY KEY,
                rider_id TEXT NOT NULL,
                action TEXT NOT NULL CHECK (action IN ('deny', 'allow')),
                reason TEXT NOT NULL,
                at TEXT NOT NULL
            ) STRICT""",
            "CREATE INDEX deny_events_rider ON deny_events (rider_id, seq)",
            *_append_only("deny_events"),
            """CREATE VIEW rider_balances AS
                SELECT f.rider_id, f.currency, COUNT(*) AS boardings,
                       SUM(f.amount_minor) AS charged_minor,
                       COALESCE(SUM(CASE WHEN o.fare_id IS NOT NULL THEN f.amount_minor END), 0) AS unconfirmed_minor
                FROM fares f LEFT JOIN outbox o ON o.fare_id = f.fare_id
                GROUP BY f.rider_id, f.currency""",
            """CREATE VIEW deny_list AS
                SELECT d.rider_id, d.reason, d.at FROM deny_events d
                WHERE d.seq = (SELECT MAX(seq) FROM deny_events e WHERE e.rider_id = d.rider_id)
                  AND d.action = 'deny'""",
        ),
    ),
)
MIGRATIONS += (
    Migration(
        2,
        "fares that left the outbox unacknowledged: refused by the cloud or quarantined on the bus",
        (
            # An outbox row used to leave only through acks, so a fare the cloud refused for good
            # looked acknowledged. Now it leaves through fare_rejections, which says who and why.
            """CREATE TABLE fare_rejections (
                seq INTEGER PRIMARY KEY,
                fare_id TEXT NOT NULL UNIQUE REFERENCES fares (fare_id),
                source TEXT NOT NULL CHECK (source IN ('cloud', 'bus')),
                reason TEXT NOT NULL,
                at TEXT NOT NULL
            ) STRICT""",
            *_append_only("fare_rejections"),
            "DROP TRIGGER outbox_leaves_only_when_acked",
            """CREATE TRIGGER outbox_leaves_only_when_acked BEFORE DELETE ON outbox
                WHEN NOT EXISTS (SELECT 1 FROM acks WHERE acks.fare_id = OLD.fare_id)
                 AND NOT EXISTS (SELECT 1 FROM fare_rejections r WHERE r.fare_id = OLD.fare_id)
                BEGIN SELECT RAISE(ABORT, 'an outbox row leaves only when the cloud acknowledges it'); END""",
        ),
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1].version

_INSERT_FARE = (
    f"INSERT OR IGNORE INTO fares ({', '.join(FARE_COLUMNS)}) VALUES ({', '.join('?' for _ in FARE_COLUMNS)})"
)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


# -- the ledger ----------------------------------------------------------------------------


class Ledger:
    """The fare ledger of one bus in one SQLite file (``":memory:"`` for tests).

    ``max_bytes`` caps the file size (``PRAGMA max_page_count``): past it, charges are refused
    exactly as on a full disk. ``min_free_bytes`` refuses charges before the disk is completely
    full (see :meth:`_check_free_space`). ``readonly`` opens an existing ledger for inspection only.
    """

    def __init__(
        self,
        path: str | Path,
        rules: FaresConfig | None = None,
        *,
        bus_id: str = "bus",
        max_bytes: int | None = None,
        busy_timeout_ms: int = 5000,
        min_free_bytes: int = DEFAULT_MIN_FREE_BYTES,
        readonly: bool = False,
        monotonic_ns: Callable[[], int] | None = None,
        check_integrity: bool = False,
    ) -> None:
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise LedgerError(f"SQLite {sqlite3.sqlite_version} is too old; the ledger needs 3.37 or newer")
        self.path = str(path)
        self.rules = rules or FaresConfig()
        self.bus_id = bus_id
        self.readonly = readonly
        self.min_free_bytes = min_free_bytes
        #: With ``monotonic_ns`` (the bus's charging ledger, times from the wall clock; e.g.
        #: ``time.monotonic_ns``, integers: no float in the money path), boarding times are
        #: checked against a monotonic record: see :meth:`_trusted_time`.
        self._monotonic_ns = monotonic_ns
        self._clock_ref: tuple[datetime, int] | None = None
        #: The last clock step found (None: none since start), for the heartbeat and the driver.
        self.clock_fault: str | None = None
        self._digest = rules_digest(self.rules)
        #: Why this ledger may not charge (a failed integrity check at start), or None.
        self.corrupt: str | None = None
        try:
            self._open(readonly, max_bytes, busy_timeout_ms, check_integrity)
        except sqlite3.Error as exc:
            hint = ("the disk may be full: free space on it (read-only 'facefare ledger show' still works)"
                    if "I/O" in str(exc) or "full" in str(exc) else
                    "the file may be damaged: keep it for recovery and see docs/security.md")  # fmt: skip
            raise LedgerError(f"ledger {self.path} cannot be opened: {exc}; {hint}") from exc

    def _open(self, readonly: bool, max_bytes: int | None, busy_timeout_ms: int, check_integrity: bool) -> None:
        memory = self.path == ":memory:"
        if readonly:
            if memory or not Path(self.path).exists():
                raise LedgerError(f"no ledger at {self.path}")
            conn = self._connect_readonly()
        else:
            if not memory:
                private_file(self.path, "bus ledger")  # rider ids and fares: owner only (0600)
            # Explicit transactions only. A Ledger may be created in one thread and used in another
            # (edge.door.node's ledger thread) but by one thread at a time: give each thread its own Ledger.
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db = Database(conn)
        self.db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        if check_integrity and not memory and not readonly:
            try:
                found = "; ".join(r[0] for r in self.db.execute("PRAGMA quick_check").fetchall())
            except sqlite3.DatabaseError as exc:
                found = str(exc)
            if found != "ok":
                # Keep every byte for recovery; charge no one (riders are sent to the driver).
                self.corrupt = found[:200]
                log.critical("ledger %s failed its integrity check (%s): no charges until it is recovered; the "
                             "file is kept as it is (see docs/security.md)", self.path, self.corrupt)  # fmt: skip
                return
        if not readonly:
            if not memory:
                self.db.enable_wal()
            self.db.execute("PRAGMA synchronous = FULL")
            self.db.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT_BYTES}")
            self.db.execute("PRAGMA foreign_keys = ON")
            self._migrate()
            if max_bytes is not None:
                page_size = self.db.execute("PRAGMA page_size").fetchone()[0]
                self.db.execute(f"PRAGMA max_page_count = {max(1, max_bytes // page_size)}")
        version = self.schema_version
        if version != SCHEMA_VERSION:
            raise LedgerError(
                f"ledger {self.path} has schema v{version}, this software reads v{SCHEMA_VERSION}"
                + ("; open it read-write once to migrate" if readonly and version < SCHEMA_VERSION else "")
            )

    def _connect_readonly(self) -> sqlite3.Connection:
        """A read-only connection; on a full disk, where SQLite cannot create the WAL index it needs,
        the file is read as immutable instead (what was checkpointed into it; a WAL is then ignored)."""
        uri = Path(self.path).resolve().as_uri()
        conn = sqlite3.connect(uri + "?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.OperationalError as exc:
            conn.close()
            wal = Path(self.path + "-wal")
            unseen = " (its WAL holds changes not shown)" if wal.exists() and wal.stat().st_size else ""
            log.warning("ledger %s: read-only open failed (%s); reading the file as immutable%s", self.path, exc,
                        unseen)  # fmt: skip
            return sqlite3.connect(uri + "?mode=ro&immutable=1", uri=True, isolation_level=None,
                                   check_same_thread=False)  # fmt: skip

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- schema ----------------------------------------------------------------------------

    @property
    def schema_version(self) -> int:
        """The newest applied migration (0 for an empty file)."""
        if "schema_migrations" not in self.db.table_names():
            return 0
        return self.db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0]

    def _migrate(self) -> None:
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL) STRICT"
        )
        found = self.schema_version
        if found > SCHEMA_VERSION:
            raise LedgerError(f"ledger {self.path} has schema v{found}, newer than this software (v{SCHEMA_VERSION})")
        for migration in MIGRATIONS:
            with self._write():
                # Checked inside the write lock: another process may have migrated meanwhile.
                if self.db.execute("SELECT 1 FROM schema_migrations WHERE version = ?", [migration.version]).fetchone():
                    continue
                for statement in migration.statements:
                    self.db.execute(statement)
                self.db.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    [migration.version, migration.name, _now()],
                )
                log.info("ledger %s: applied schema migration v%d (%s)", self.path, migration.version, migration.name)

    @contextlib.contextmanager
    def _write(self) -> Iterator[None]:
        """One write transaction: BEGIN IMMEDIATE ... COMMIT, rolled back on any error."""
        if self.readonly:
            raise LedgerError("this ledger is open read-only")
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.conn.in_transaction:
                try:
                    self.db.execute("ROLLBACK")
                except sqlite3.Error:
                    log.exception("ledger %s: rollback failed", self.path)
            raise

    # -- charging --------------------------------------------------------------------------

    def charge(
        self,
        rider_id: str,
        route_id: str,
        at: datetime,
        *,
        trip_id: str,
        concession: str = "adult",
        fare_id: str | None = None,
    ) -> FareDecision:
        """Price a boarding with the fare rules and record it; return the decision for the door.

        The decision is returned only after the fare and its outbox row are committed to disk,
        so feedback given to the rider is never lost to a power cut. The same ``fare_id``
        (default: :func:`fare_id_for`) recorded again returns the original decision with
        ``replayed=True`` and charges nothing. If the ledger cannot store the charge (disk
        full, I/O error), the rider is refused with a clear message and an ERROR is logged.
        """
        if self._monotonic_ns is not None:
            at = self._trusted_time(at, self._monotonic_ns())
        fid = fare_id or fare_id_for(self.bus_id, trip_id, rider_id, at)
        if self.corrupt is not None:
            log.error("ledger %s is corrupt (%s): refused rider %s", self.path, self.corrupt, rider_id)
            reason, cur = Reason.UNAVAILABLE, self.rules.currency
            return FareDecision(fid, Outcome.REFUSED, 0, cur, reason, fares.rider_message(reason, 0, cur))
        try:
            decision = self._charge(fid, trip_id, Boarding(rider_id, route_id, at, concession))
        except (sqlite3.Error, LedgerUnavailable) as exc:
            log.error("ledger %s cannot store charges (%s): refused rider %s on route %s",
                      self.path, exc, rider_id, route_id)  # fmt: skip
            reason, cur = Reason.UNAVAILABLE, self.rules.currency
            return FareDecision(fid, Outcome.REFUSED, 0, cur, reason, fares.rider_message(reason, 0, cur))
        level = logging.WARNING if decision.outcome is Outcome.REFUSED else logging.INFO
        log.log(level, "fare %s rider %s route %s: %s %s (%s)%s", decision.fare_id, rider_id, route_id,
                decision.outcome.value, decision.amount_minor, decision.reason.value,
                " replayed" if decision.replayed else "")
        return decision

    def _trusted_time(self, at: datetime, mono_ns: int) -> datetime:
        """The boarding time to charge with, never from a clock that stepped.

        Buses without a real-time clock can boot with a wrong time, and a clock can be set wrong.
        Within this process the wall clock must advance with the monotonic clock: a step of more
        than :data:`CLOCK_STEP_TOLERANCE` either way is a fault (logged as an ERROR, shown in the
        heartbeat's ``clock``) and the time goes on from the monotonic clock instead. At the first
        charge after a start, a time before the newest boarding in the ledger is a step back and
        goes on from that boarding. So a step never makes dedupe, transfer or cap rules see one
        boarding as two (the same rider seconds later is still a duplicate; the day is the same day).
        """
        trusted = at
        if self._clock_ref is not None:
            expected = self._clock_ref[0] + timedelta(microseconds=(mono_ns - self._clock_ref[1]) // 1000)
            if abs(at - expected) > CLOCK_STEP_TOLERANCE:
                trusted = expected
        else:
            newest = self.db.execute("SELECT MAX(boarded_ms) FROM fares").fetchone()[0]
            if newest is not None and at < from_epoch_ms(newest) - CLOCK_STEP_TOLERANCE:
                trusted = from_epoch_ms(newest).astimezone(at.tzinfo)
        if trusted != at:
            step_s = (at - trusted) // timedelta(seconds=1)
            self.clock_fault = (f"wall clock stepped {step_s:+d} s at {trusted.isoformat()}; "
                                "charging on the monotonic clock until restart")[:200]  # fmt: skip
            log.error("ledger %s: %s", self.path, self.clock_fault)
        self._clock_ref = (trusted, mono_ns)
        return trusted

    def _charge(self, fid: str, trip_id: str, boarding: Boarding) -> FareDecision:
        stored = self._fare_row(fid)  # a replay is a read: it is answered even on a full disk
        if stored is not None:
            return self._replayed(stored)
        self._check_free_space()
        with self._write():
            stored = self._fare_row(fid)  # again under the write lock
            if stored is not None:
                return self._replayed(stored)
            quote = fares.quote(self.rules, boarding, self._rider_state(boarding.rider_id, boarding.at))
            if quote.outcome is Outcome.CHARGED:
                self._record(fid, trip_id, boarding, quote)
            return self._decide(fid, quote, boarding.concession)

    def _check_free_space(self) -> None:
        """Refuse to write when the disk is nearly full.

        SQLite reports a full disk cleanly on writes, but in WAL mode its shared-memory index
        (the ``-shm`` file) is memory-mapped, and on a completely full filesystem touching it can
        kill the process with SIGBUS - even a later reader's. Keeping ``min_free_bytes`` free
        means the ledger itself never fills the disk, so what it holds stays readable.
        """
        if self.path == ":memory:" or self.min_free_bytes <= 0:
            return
        st = os.statvfs(Path(self.path).parent)
        free = st.f_bavail * st.f_frsize
        if free < self.min_free_bytes:
            raise LedgerUnavailable(f"disk nearly full: {free} bytes free, keeping {self.min_free_bytes}")

    def _decide(self, fid: str, quote: Quote, concession: str) -> FareDecision:
        message = fares.rider_message(quote.reason, quote.amount_minor, quote.currency, concession)
        return FareDecision(quote.duplicate_of or fid, quote.outcome, quote.amount_minor, quote.currency,
                        quote.reason, message)

    def _replayed(self, row: dict[str, Any]) -> FareDecision:
        reason = Reason(row["reason"])
        message = fares.rider_message(reason, row["amount_minor"], row["currency"], row["concession"])
        return FareDecision(row["fare_id"], Outcome.CHARGED, row["amount_minor"], row["currency"], reason, message,
                        replayed=True)

    def _rider_state(self, rider_id: str, at: datetime) -> RiderState:
        ms = epoch_ms(at)
        span = HISTORY_SPAN // timedelta(milliseconds=1)
        recent = tuple(
            PastFare(fid, from_epoch_ms(bms), amount)
            for fid, bms, amount in self.db.execute(
                "SELECT fare_id, boarded_ms, amount_minor FROM fares "
                "WHERE rider_id = ? AND boarded_ms BETWEEN ? AND ? ORDER BY boarded_ms",
                [rider_id, ms - span, ms + span],
            )
        )
        unconfirmed = self.db.execute(
            "SELECT COALESCE(SUM(amount_minor), 0) FROM fares "
            "WHERE rider_id = ? AND fare_id IN (SELECT fare_id FROM outbox)",
            [rider_id],
        ).fetchone()[0]
        return RiderState(recent, unconfirmed, self._denied(rider_id))

    def _record(self, fid: str, trip_id: str, boarding: Boarding, quote: Quote) -> None:
        row = {
            "fare_id": fid,
            "bus_id": self.bus_id,
            "trip_id": trip_id,
            "route_id": boarding.route_id,
            "rider_id": boarding.rider_id,
            "concession": boarding.concession,
            "boarded_at": boarding.at.astimezone(UTC).isoformat(timespec="milliseconds"),
            "boarded_ms": epoch_ms(boarding.at),
            "service_day": fares.service_day(boarding.at, self.rules).isoformat(),
            "amount_minor": quote.amount_minor,
            "base_minor": quote.base_minor,
            "currency": quote.currency,
            "reason": quote.reason.value,
            "rules_digest": self._digest,
            "recorded_at": _now(),
        }
        self.db.execute(_INSERT_FARE, [row[c] for c in FARE_COLUMNS])
        # The outbox row goes in the same transaction: no fare without its way to the cloud.
        self.db.execute(
            "INSERT INTO outbox (fare_id, queued_at, payload) VALUES (?, ?, ?)",
            [fid, row["recorded_at"], json.dumps(row, sort_keys=True, separators=(",", ":"))],
        )

    # -- outbox ----------------------------------------------------------------------------

    def outbox(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Fares waiting for the cloud, oldest first: ``{"fare_id", "queued_at", "payload"}``.

        ``payload`` is the fare as a dict (the JSON the sync sends).
        """
        sql = "SELECT fare_id, queued_at, payload FROM outbox ORDER BY rowid"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [{**r, "payload": json.loads(r["payload"])} for r in self.db.query(sql)]

    def ack(self, fare_ids: Iterable[str], rejected: dict[str, str] | None = None) -> int:
        """The cloud has these fares: record the acknowledgements and empty their outbox rows.

        ``rejected`` (fare id -> reason) are fares the cloud refused for good: they leave the
        outbox too, but are recorded in ``fare_rejections`` (source ``cloud``), not as acknowledged,
        so ``facefare ledger show`` lists them for the operator. Returns how many rows left the
        outbox; ids already settled or unknown are ignored (logged), so a repeated ack is harmless.
        """
        rejected = dict(rejected or {})
        ids = list(dict.fromkeys([*fare_ids, *rejected]))
        done = 0
        try:
            with self._write():
                at = _now()
                for fid in ids:
                    if self.db.execute("SELECT 1 FROM outbox WHERE fare_id = ?", [fid]).fetchone() is None:
                        continue
                    if fid in rejected:
                        self.db.execute(
                            "INSERT OR IGNORE INTO fare_rejections (fare_id, source, reason, at) "
                            "VALUES (?, 'cloud', ?, ?)",
                            [fid, str(rejected[fid])[:200], at],
                        )
                    else:
                        self.db.execute("INSERT OR IGNORE INTO acks (fare_id, acked_at) VALUES (?, ?)", [fid, at])
                    self.db.execute("DELETE FROM outbox WHERE fare_id = ?", [fid])
                    done += 1
        except sqlite3.Error as exc:
            log.error("ledger %s cannot record acknowledgements (%s)", self.path, exc)
            raise LedgerUnavailable(f"cannot record acknowledgements: {exc}") from exc
        if done < len(ids):
            log.warning("ledger %s: %d of %d acknowledged fares were not in the outbox", self.path,
                        len(ids) - done, len(ids))
        return done

    def quarantine(self, fare_id: str, reason: str) -> bool:
        """Take a fare the protocol refuses out of the outbox, so it stops blocking the fares after it.

        The fare stays in ``fares`` (the rider was charged; nothing is lost) and is recorded in
        ``fare_rejections`` with source ``bus``; ``facefare ledger show`` lists it for the operator.
        Returns whether a row left the outbox.
        """
        with self._write():
            if self.db.execute("SELECT 1 FROM outbox WHERE fare_id = ?", [fare_id]).fetchone() is None:
                return False
            self.db.execute(
                "INSERT OR IGNORE INTO fare_rejections (fare_id, source, reason, at) VALUES (?, 'bus', ?, ?)",
                [fare_id, reason[:200], _now()],
            )
            self.db.execute("DELETE FROM outbox WHERE fare_id = ?", [fare_id])
        log.error("ledger %s: fare %s quarantined (%s); it stays in the ledger, not sent", self.path, fare_id, reason)
        return True

    def rejections(self) -> list[dict[str, Any]]:
        """Fares that left the outbox without the cloud's acknowledgement: who refused them and why."""
        return list(self.db.query(
            "SELECT r.fare_id, r.source, r.reason, r.at, f.rider_id, f.amount_minor, f.currency, f.service_day "
            "FROM fare_rejections r JOIN fares f ON f.fare_id = r.fare_id ORDER BY r.seq"
        ))  # fmt: skip

    # -- deny list -------------------------------------------------------------------------

    def _denied(self, rider_id: str) -> bool:
        row = self.db.execute(
            "SELECT action FROM deny_events WHERE rider_id = ? ORDER BY seq DESC LIMIT 1", [rider_id]
        ).fetchone()
        return row is not None and row[0] == "deny"

    def is_denied(self, rider_id: str) -> bool:
        """Whether the rider is on the deny list (the ledger's or the configuration's)."""
        return rider_id in self.rules.deny or self._denied(rider_id)

    def deny(self, rider_id: str, reason: str = "blocked") -> None:
        """Put a rider on the deny list (``reason``: blocked, erased...); an append-only event."""
        self._deny_event(rider_id, "deny", reason)

    def allow(self, rider_id: str, reason: str = "unblocked") -> None:
        """Take a rider off the ledger's deny list; an append-only event."""
        self._deny_event(rider_id, "allow", reason)

    def _deny_event(self, rider_id: str, action: str, reason: str) -> None:
        try:
            with self._write():
                self.db.execute(
                    "INSERT INTO deny_events (rider_id, action, reason, at) VALUES (?, ?, ?, ?)",
                    [rider_id, action, reason, _now()],
                )
        except sqlite3.Error as exc:
            log.error("ledger %s cannot update the deny list (%s)", self.path, exc)
            raise LedgerUnavailable(f"cannot update the deny list: {exc}") from exc
        log.info("deny list: %s rider %s (%s)", action, rider_id, reason)

    def deny_list(self) -> list[dict[str, Any]]:
        """Riders currently denied by the ledger: ``{"rider_id", "reason", "at"}``."""
        return list(self.db.query("SELECT rider_id, reason, at FROM deny_list ORDER BY rider_id"))

    # -- reading ---------------------------------------------------------------------------

    def _fare_row(self, fare_id: str) -> dict[str, Any] | None:
        cur = self.db.execute(f"SELECT {', '.join(FARE_COLUMNS)} FROM fares WHERE fare_id = ?", [fare_id])
        row = cur.fetchone()
        return None if row is None else dict(zip(FARE_COLUMNS, row, strict=True))

    def fare(self, fare_id: str) -> dict[str, Any] | None:
        """One recorded fare as a dict, or None."""
        return self._fare_row(fare_id)

    def fares(
        self, *, day: str | None = None, route: str | None = None, rider: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Recorded fares in the order they were recorded, optionally for one day, route or rider."""
        where, params = _filters(day, route, rider)
        yield from self.db.query(f"SELECT {', '.join(FARE_COLUMNS)} FROM fares{where} ORDER BY seq", params)

    def balance(self, rider_id: str) -> Balance:
        """A rider's balance derived from the fares (the ``rider_balances`` view)."""
        row = next(
            self.db.query("SELECT * FROM rider_balances WHERE rider_id = ? AND currency = ?",
                          [rider_id, self.rules.currency]),
            None,
        )
        if row is None:
            return Balance(rider_id, self.rules.currency, 0, 0, 0)
        return Balance(rider_id, row["currency"], row["boardings"], row["charged_minor"], row["unconfirmed_minor"])

    def totals(
        self, by: GroupBy, *, day: str | None = None, route: str | None = None, rider: str | None = None
    ) -> list[Total]:
        """Boardings and charges per day, route or rider (never summed across currencies)."""
        column = GROUP_COLUMNS[by]
        where, params = _filters(day, route, rider)
        rows = self.db.query(
            f"SELECT {column} AS key, currency, COUNT(*) AS boardings, SUM(amount_minor > 0) AS paid, "
            f"SUM(amount_minor) AS charged FROM fares{where} GROUP BY {column}, currency ORDER BY {column}, currency",
            params,
        )
        return [Total(r["key"], r["currency"], r["boardings"], r["paid"], r["charged"]) for r in rows]

    def stats(self) -> dict[str, Any]:
        """Counts for a quick look: fares, outbox, acks, denied riders, schema version, bytes on disk."""
        count = self.db.execute(
            "SELECT (SELECT COUNT(*) FROM fares), (SELECT COUNT(*) FROM outbox), (SELECT COUNT(*) FROM acks), "
            "(SELECT COUNT(*) FROM deny_list), "
            "(SELECT COUNT(*) FROM fare_rejections WHERE source = 'cloud'), "
            "(SELECT COUNT(*) FROM fare_rejections WHERE source = 'bus')"
        ).fetchone()
        return {
            "path": self.path,
            "bus_id": self.bus_id,
            "schema_version": self.schema_version,
            "fares": count[0],
            "outbox": count[1],
            "acks": count[2],
            "denied_riders": count[3],
            "rejected_by_cloud": count[4],
            "quarantined": count[5],
            "bytes_on_disk": self.size_bytes(),
        }

    def size_bytes(self) -> int:
        """Bytes on disk: the database file plus its WAL and shared-memory files."""
        if self.path == ":memory:":
            return 0
        return sum(p.stat().st_size for p in (Path(self.path + s) for s in ("", "-wal", "-shm")) if p.exists())

    def integrity_check(self) -> str:
        """``PRAGMA integrity_check``: 'ok' for a sound file."""
        return "; ".join(r[0] for r in self.db.execute("PRAGMA integrity_check").fetchall())


def _filters(day: str | None, route: str | None, rider: str | None) -> tuple[str, list[str]]:
    clauses, params = [], []
    for column, value in (("service_day", day), ("route_id", route), ("rider_id", rider)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params
