"""The cloud's encrypted template store: riders, their face templates, kept photos and the audit log.

One SQLite file. Templates (128 float32 values each) and photos (only with ``keep_photos``) are
sealed with AES-256-GCM under the key in the store's key file (base64 text, mode 0600, created on
first use); each sealed value is bound, as associated data, to its rider, row id and the hash of
the embedding model that made it, so a row copied to another rider or model does not open.
Nothing else is secret-sealed: rider records hold an id, a display name or reference, a
concession and an account.

The audit log is append-only (SQLite triggers refuse UPDATE and DELETE) and never holds
biometric data: who did what to which rider id, when, with counts and bus ids.

    >>> store = TemplateStore.open(tmp / "store.db", tmp / "store.key")
    >>> store.add_rider(RiderRecord(rider_id="r1", concession="adult"), [emb], model_sha256=sha)
    >>> store.gallery(sha).match(emb).rider_id
    'r1'
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from cloud_sync.sealing import StoreError, create_key, load_key, seal, unseal  # noqa: F401 (re-exported)
from cloud_sync.sqlite_schema import schema, statements, upgrade
from edge.faces.match import Gallery
from edge.files import private_file

log = logging.getLogger(__name__)

DIM = 128
RiderId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class RiderRecord(BaseModel):
    """What the operator knows about a rider. No biometric data."""

    model_config = ConfigDict(extra="forbid")

    rider_id: RiderId = Field(description="Stable rider id (letters, digits, '_', '.', '-'; charged on the bus)")
    display_name: str = Field("", max_length=200, description="Name shown to the operator (may be empty)")
    reference: str = Field("", max_length=200, description="The operator's own reference, e.g. a card number")
    concession: str = Field("adult", min_length=1, max_length=40, description="Fare concession, e.g. adult, child")
    account: str = Field("", max_length=200, description="The account fares are billed to")
    buses: list[RiderId] = Field(
        default_factory=list, description="Buses whose gallery holds this rider; empty (and no zones): every bus"
    )
    zones: list[RiderId] = Field(
        default_factory=list,
        description="Zones (routes, a region, 'my usual buses') whose buses hold this rider; a bus holds the riders "
        "of its own zones, so its gallery (N) stays small. No buses and no zones: every bus",
    )


@dataclass(frozen=True)
class Template:
    template_id: str
    rider_id: str
    model_sha256: str
    embedding: np.ndarray  # (128,) float32


def _template_aad(rider_id: str, template_id: str, model: str) -> bytes:
    return f"facefare-template|{rider_id}|{template_id}|{model}".encode()


def _photo_aad(rider_id: str, photo_id: str) -> bytes:
    return f"facefare-photo|{rider_id}|{photo_id}".encode()


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS riders (
    rider_id TEXT PRIMARY KEY,
    display_name TEXT NOT NULL DEFAULT '',
    reference TEXT NOT NULL DEFAULT '',
    concession TEXT NOT NULL,
    account TEXT NOT NULL DEFAULT '',
    buses TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL CHECK (status IN ('active', 'erased')),
    revision INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS templates (
    template_id TEXT PRIMARY KEY,
    rider_id TEXT NOT NULL REFERENCES riders(rider_id),
    model_sha256 TEXT NOT NULL,
    nonce BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS templates_rider ON templates(rider_id);
CREATE TABLE IF NOT EXISTS photos (
    photo_id TEXT PRIMARY KEY,
    rider_id TEXT NOT NULL REFERENCES riders(rider_id),
    name TEXT NOT NULL,
    nonce BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    rider_id TEXT,
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""
#: The store's schema, step by step (cloud_sync.sqlite_schema); add steps, never edit one.
# Issue 16 (second factor, zones): a step of its own, so stores made before it gain the tables.
CODES_ZONES_SCHEMA = """
CREATE TABLE IF NOT EXISTS rider_codes (
    rider_id TEXT PRIMARY KEY REFERENCES riders(rider_id),
    nonce BLOB NOT NULL,
    ciphertext BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS rider_zones (
    rider_id TEXT NOT NULL REFERENCES riders(rider_id),
    zone TEXT NOT NULL,
    PRIMARY KEY (rider_id, zone)
);
"""
MIGRATIONS = schema(
    "facefare-template-store",
    [("0001_initial", statements(SCHEMA)), ("0002_codes_zones", statements(CODES_ZONES_SCHEMA))],
)


class TemplateStore:
    """Riders and their sealed templates in one SQLite file; safe to share between threads."""

    def __init__(self, path: Path, key: bytes, *, keep_photos: bool = False) -> None:
        self.path = Path(path)
        private_file(self.path, "template store")  # names, accounts, operators' hashes: owner only (0600)
        self.key = key
        self.keep_photos = keep_photos
        self.lock = threading.RLock()
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        # secure_delete overwrites deleted rows with zeros, so an erased template leaves no bytes behind.
        for pragma in ("journal_mode=DELETE", "synchronous=FULL", "secure_delete=ON", "foreign_keys=ON"):
            self.db.execute(f"PRAGMA {pragma}")
        upgrade(self.db, MIGRATIONS, f"template store {self.path}")
        self._check_key()

    @classmethod
    def open(cls, path: Path, key_file: Path, *, keep_photos: bool = False) -> TemplateStore:
        """Open (or create) the store; the key file is created with it and must match it afterwards."""
        new = not Path(path).exists()
        return cls(path, load_key(key_file, create=new), keep_photos=keep_photos)

    def _check_key(self) -> None:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'key_check'").fetchone()
        if row is None:
            nonce, ct = seal(self.key, b"facefare", b"key-check")
            self.db.execute("INSERT INTO meta VALUES ('key_check', ?)", (json.dumps([nonce.hex(), ct.hex()]),))
            return
        nonce_hex, ct_hex = json.loads(row["value"])
        try:
            unseal(self.key, bytes.fromhex(nonce_hex), bytes.fromhex(ct_hex), b"key-check")
        except StoreError:
            raise StoreError(f"the key file does not belong to the store {self.path}") from None

    def close(self) -> None:
        with self.lock:
            self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any error)."""
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def _next_revision(self, db: sqlite3.Connection) -> int:
        row = db.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()
        rev = (int(row["value"]) if row else 0) + 1
        db.execute("INSERT OR REPLACE INTO meta VALUES ('revision', ?)", (str(rev),))
        return rev

    # -- audit ------------------------------------------------------------------------------

    def audit(self, db: sqlite3.Connection, actor: str, action: str, rider_id: str | None, **detail: Any) -> None:
        """Append one audit record (inside the caller's transaction). ``detail`` must hold no biometrics."""
        db.execute(
            "INSERT INTO audit (at, actor, action, rider_id, detail) VALUES (?, ?, ?, ?, ?)",
            (now_iso(), actor, action, rider_id, json.dumps(detail, sort_keys=True)),
        )

    def change_mark(self) -> int:
        """A number that grows with every enrollment, erasure or other audited change, whichever
        process made it (the audit log is append-only): a cache of riders is current while it holds."""
        with self.lock:
            return int(self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM audit").fetchone()[0])

    def changed_since(self, mark: int, except_rider: str | None = None) -> bool:
        """Whether anything was audited after ``mark`` (other than changes of ``except_rider``)."""
        with self.lock:
            row = self.db.execute("SELECT 1 FROM audit WHERE seq > ? AND (rider_id IS NULL OR rider_id != ?) LIMIT 1",
                                  (mark, except_rider or "")).fetchone()  # fmt: skip
        return row is not None

    def audit_log(self, rider_id: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            sql = "SELECT * FROM audit" + (" WHERE rider_id = ?" if rider_id else "") + " ORDER BY seq"
            rows = self.db.execute(sql, (rider_id,) if rider_id else ()).fetchall()
        return [{**dict(r), "detail": json.loads(r["detail"])} for r in rows]

    # -- riders and templates ---------------------------------------------------------------

    def rider(self, rider_id: str) -> dict[str, Any] | None:
        """The rider's row (with ``status`` and ``revision``), or None."""
        with self.lock:
            row = self.db.execute("SELECT * FROM riders WHERE rider_id = ?", (rider_id,)).fetchone()
        return dict(row) if row else None

    def riders(self, *, active_only: bool = True) -> list[dict[str, Any]]:
        with self.lock:
            sql = "SELECT * FROM riders" + (" WHERE status = 'active'" if active_only else "") + " ORDER BY rider_id"
            return [dict(r) for r in self.db.execute(sql).fetchall()]

    def add_rider(
        self,
        record: RiderRecord,
        embeddings: list[np.ndarray],
        *,
        model_sha256: str,
        photos: list[tuple[str, bytes]] | None = None,
        actor: str = "operator",
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Create a rider with ``embeddings`` as their templates (an erased id may not come back)."""
        if not embeddings:
            raise StoreError(f"rider {record.rider_id}: no templates to store")
        with self.transaction() as db:
            old = db.execute("SELECT status FROM riders WHERE rider_id = ?", (record.rider_id,)).fetchone()
            if old is not None:
                what = "was erased; enroll them under a new id" if old["status"] == "erased" else "is already enrolled"
                raise StoreError(f"rider {record.rider_id} {what}")
            now, rev = now_iso(), self._next_revision(db)
            db.execute(
                "INSERT INTO riders VALUES (?, ?, ?, ?, ?, ?, 'active', ?, ?, ?)",
                (record.rider_id, record.display_name, record.reference, record.concession, record.account,
                 ",".join(record.buses), rev, now, now),
            )  # fmt: skip
            self._set_zones(db, record.rider_id, record.zones)
            self._insert_templates(db, record.rider_id, embeddings, model_sha256)
            kept = self._insert_photos(db, record.rider_id, photos or [])
            self.audit(db, actor, "enroll", record.rider_id, templates=len(embeddings), model_sha256=model_sha256,
                       photos_kept=kept, **(detail or {}))  # fmt: skip

    def update_rider(self, record: RiderRecord, *, actor: str = "operator") -> None:
        """Change a rider's name, reference, concession or account (their templates stay)."""
        with self.transaction() as db:
            row = db.execute("SELECT status FROM riders WHERE rider_id = ?", (record.rider_id,)).fetchone()
            if row is None or row["status"] != "active":
                raise StoreError(f"rider {record.rider_id} is not enrolled")
            db.execute(
                "UPDATE riders SET display_name = ?, reference = ?, concession = ?, account = ?, buses = ?, "
                "revision = ?, updated_at = ? WHERE rider_id = ?",
                (record.display_name, record.reference, record.concession, record.account, ",".join(record.buses),
                 self._next_revision(db), now_iso(), record.rider_id),
            )  # fmt: skip
            self._set_zones(db, record.rider_id, record.zones)
            self.audit(db, actor, "update", record.rider_id, concession=record.concession)

    @staticmethod
    def _set_zones(db: sqlite3.Connection, rider_id: str, zones: list[str]) -> None:
        db.execute("DELETE FROM rider_zones WHERE rider_id = ?", (rider_id,))
        db.executemany("INSERT INTO rider_zones VALUES (?, ?)", [(rider_id, z) for z in sorted(set(zones))])

    def set_code(self, rider_id: str, code: str, *, actor: str = "operator") -> None:
        """Keep the rider's second-factor code as its sealed slow digest (never the code); buses get it
        keyed for each of them with the next sync. The audit log records that it changed, not what."""
        from edge.door.second_factor import code_digest, valid_code

        if not valid_code(code):
            raise StoreError("a code is 4 to 8 digits")
        digest = code_digest(rider_id, code)
        with self.transaction() as db:
            row = db.execute("SELECT status FROM riders WHERE rider_id = ?", (rider_id,)).fetchone()
            if row is None or row["status"] != "active":
                raise StoreError(f"rider {rider_id} is not enrolled")
            nonce, ct = seal(self.key, digest, f"facefare-code|{rider_id}".encode())
            db.execute("INSERT OR REPLACE INTO rider_codes VALUES (?, ?, ?)", (rider_id, nonce, ct))
            db.execute("UPDATE riders SET revision = ?, updated_at = ? WHERE rider_id = ?",
                       (self._next_revision(db), now_iso(), rider_id))  # fmt: skip
            self.audit(db, actor, "code_set", rider_id)

    def code_digest(self, rider_id: str) -> bytes | None:
        """The sealed digest of the rider's code, unsealed (None: no code)."""
        with self.lock:
            sql = "SELECT nonce, ciphertext FROM rider_codes WHERE rider_id = ?"
            row = self.db.execute(sql, (rider_id,)).fetchone()
        return None if row is None else unseal(self.key, row[0], row[1], f"facefare-code|{rider_id}".encode())

    def zones(self, rider_id: str) -> list[str]:
        """The rider's zones (empty: none)."""
        with self.lock:
            rows = self.db.execute("SELECT zone FROM rider_zones WHERE rider_id = ? ORDER BY zone", (rider_id,))
            return [r[0] for r in rows.fetchall()]

    def replace_templates(
        self, rider_id: str, embeddings: list[np.ndarray], *, model_sha256: str, actor: str = "operator",
        action: str = "update_templates",
    ) -> None:  # fmt: skip
        """Replace all of a rider's templates (new photos, or re-embedding with a new model)."""
        if not embeddings:
            raise StoreError(f"rider {rider_id}: no templates to store")
        with self.transaction() as db:
            row = db.execute("SELECT status FROM riders WHERE rider_id = ?", (rider_id,)).fetchone()
            if row is None or row["status"] != "active":
                raise StoreError(f"rider {rider_id} is not enrolled")
            db.execute("DELETE FROM templates WHERE rider_id = ?", (rider_id,))
            self._insert_templates(db, rider_id, embeddings, model_sha256)
            db.execute("UPDATE riders SET revision = ?, updated_at = ? WHERE rider_id = ?",
                       (self._next_revision(db), now_iso(), rider_id))  # fmt: skip
            self.audit(db, actor, action, rider_id, templates=len(embeddings), model_sha256=model_sha256)

    def _insert_templates(
        self, db: sqlite3.Connection, rider_id: str, embeddings: list[np.ndarray], model: str
    ) -> None:
        now = now_iso()
        for emb in embeddings:
            vec = np.asarray(emb, dtype=np.float32).reshape(-1)
            if vec.shape != (DIM,) or not np.isfinite(vec).all():
                raise StoreError(f"rider {rider_id}: a template must be {DIM} finite numbers")
            tid = uuid.uuid4().hex
            nonce, ct = seal(self.key, vec.tobytes(), _template_aad(rider_id, tid, model))
            db.execute("INSERT INTO templates VALUES (?, ?, ?, ?, ?, ?)", (tid, rider_id, model, nonce, ct, now))

    def _insert_photos(self, db: sqlite3.Connection, rider_id: str, photos: list[tuple[str, bytes]]) -> int:
        if not self.keep_photos:
            return 0
        for name, data in photos:
            pid = uuid.uuid4().hex
            nonce, ct = seal(self.key, data, _photo_aad(rider_id, pid))
            db.execute("INSERT INTO photos VALUES (?, ?, ?, ?, ?, ?)", (pid, rider_id, name, nonce, ct, now_iso()))
        return len(photos)

    def templates(self, rider_id: str | None = None, model_sha256: str | None = None) -> list[Template]:
        """Decrypted templates (of one rider and/or one model), ordered by rider."""
        where, args = [], []
        if rider_id is not None:
            where.append("rider_id = ?")
            args.append(rider_id)
        if model_sha256 is not None:
            where.append("model_sha256 = ?")
            args.append(model_sha256)
        sql = "SELECT * FROM templates" + (" WHERE " + " AND ".join(where) if where else "")
        with self.lock:
            rows = self.db.execute(sql + " ORDER BY rider_id, rowid", args).fetchall()
        out = []
        for r in rows:
            data = unseal(self.key, r["nonce"], r["ciphertext"],
                          _template_aad(r["rider_id"], r["template_id"], r["model_sha256"]))  # fmt: skip
            out.append(Template(r["template_id"], r["rider_id"], r["model_sha256"], np.frombuffer(data, np.float32)))
        return out

    def models(self) -> dict[str, int]:
        """Template count per embedding-model hash."""
        with self.lock:
            rows = self.db.execute("SELECT model_sha256, COUNT(*) AS n FROM templates GROUP BY model_sha256")
            return {r["model_sha256"]: r["n"] for r in rows}

    def gallery(self, model_sha256: str) -> Gallery:
        """Every active rider's templates of ``model_sha256`` as an in-memory matcher."""
        found = self.templates(model_sha256=model_sha256)
        embeddings = np.stack([t.embedding for t in found]) if found else np.zeros((0, DIM), np.float32)
        return Gallery([t.rider_id for t in found], embeddings)

    def photos(self, rider_id: str) -> list[tuple[str, bytes]]:
        """The rider's kept photos (name, bytes); empty unless the operator opted in to keeping them."""
        with self.lock:
            rows = self.db.execute("SELECT * FROM photos WHERE rider_id = ? ORDER BY rowid",
                                   (rider_id,)).fetchall()  # fmt: skip
        return [(r["name"], unseal(self.key, r["nonce"], r["ciphertext"], _photo_aad(rider_id, r["photo_id"])))
                for r in rows]  # fmt: skip

    def erase(self, rider_id: str, *, actor: str = "operator", db: sqlite3.Connection | None = None) -> int:
        """Delete the rider's templates and photos, blank their personal data, keep an audit record.

        The rider id stays (status ``erased``) so that buses can be told and confirmations recorded.
        Returns the number of templates deleted. Pass ``db`` to run inside the caller's transaction.
        """
        if db is None:
            with self.transaction() as tx:
                return self.erase(rider_id, actor=actor, db=tx)
        row = db.execute("SELECT status FROM riders WHERE rider_id = ?", (rider_id,)).fetchone()
        if row is None:
            raise StoreError(f"no rider {rider_id}")
        if row["status"] == "erased":
            raise StoreError(f"rider {rider_id} is already erased")
        n = db.execute("DELETE FROM templates WHERE rider_id = ?", (rider_id,)).rowcount
        photos = db.execute("DELETE FROM photos WHERE rider_id = ?", (rider_id,)).rowcount
        db.execute("DELETE FROM rider_codes WHERE rider_id = ?", (rider_id,))
        db.execute(
            "UPDATE riders SET status = 'erased', display_name = '', reference = '', account = '', revision = ?, "
            "updated_at = ? WHERE rider_id = ?",
            (self._next_revision(db), now_iso(), rider_id),
        )
        self.audit(db, actor, "erase", rider_id, templates_deleted=n, photos_deleted=photos)
        return n
