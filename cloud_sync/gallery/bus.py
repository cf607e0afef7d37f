"""The bus's gallery: applies the cloud's signed, encrypted deltas atomically and serves the matcher.

:class:`BusGallery` keeps the riders' templates in a SQLite file, each template sealed with the
bus's store key (derived from its provisioned gallery secret); no face image ever reaches a bus.
A delta is applied only if, in this order:

1. its envelope passes ``cloud_sync.protocol.parse`` (schema, topic, the cloud's signature);
   the freshness window is not applied to deltas, because the version chain refuses replays and
   a bus coming back after hours must still apply what was queued for it;
2. it was made by the bus's own embedding model (``model_sha256``);
3. it is newer than the bus's version (an older one is ignored);
4. it decrypts under the bus's delta key with the bus id and versions as associated data;
5. it is the next one: ``base_version`` equals the bus's version (one from further ahead is
   kept aside as *pending* and the bus asks the cloud to resend).

Its operations and the new version are then written in one SQLite transaction (never half a
delta), and the in-memory matcher is replaced by a new one in a single assignment, so a match in
progress sees either the old gallery or the new one; erased riders leave the matcher at once,
and the matcher with the additions is rebuilt in the background (see :meth:`BusGallery.gallery`).
Erased templates are overwritten on disk (``secure_delete``, then a truncating WAL checkpoint).
After each applied delta the bus publishes ``gallery_ack`` (version, erased ids).

After a (re)connection :attr:`ready` is False until the bus holds the gallery head (the cloud
publishes every delta *retained*, so the broker hands the newest one over on subscription) or
``sync_timeout_s`` has passed: erasures that came while the bus was away are applied before the
bus charges anyone.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cloud_sync.gallery.delta import DIM, DeltaError, DeltaOps, EraseOp, code_key, derive_keys, open_delta
from cloud_sync.protocol import CLOUD, Envelope, GalleryAck, GalleryDelta, ProtocolError, encode, parse, topic_for
from cloud_sync.sealing import seal, unseal
from cloud_sync.sqlite_schema import schema, statements, upgrade
from edge.faces.fast_match import QuantizedGallery
from edge.faces.match import Gallery, Match
from edge.files import InsecureFileError, private_file

log = logging.getLogger(__name__)

#: A decrypted delta: its ops and, per op, the decoded templates (None for an erase).
Opened = tuple[DeltaOps, list[np.ndarray | None]]

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS riders (rider_id TEXT PRIMARY KEY, concession TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS templates (
    rider_id TEXT NOT NULL REFERENCES riders(rider_id),
    idx INTEGER NOT NULL,
    nonce BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
    PRIMARY KEY (rider_id, idx)
);
"""
#: The gallery file's schema, step by step (cloud_sync.sqlite_schema); add steps, never edit one.
# Issue 16 (second factor, zones): a step of its own, so stores made before it gain the tables.
CODES_SCHEMA = """
CREATE TABLE IF NOT EXISTS codes (
    rider_id TEXT PRIMARY KEY REFERENCES riders(rider_id),
    nonce BLOB NOT NULL,
    ciphertext BLOB NOT NULL
);
"""
MIGRATIONS = schema(
    "facefare-bus-gallery",
    [("0001_initial", statements(SCHEMA)), ("0002_codes", statements(CODES_SCHEMA))],
)


def _without(gallery: Gallery | QuantizedGallery, erased: list[str]) -> Gallery | QuantizedGallery:
    """The same matcher minus the erased riders (a new object; the old one is left as it is)."""
    if isinstance(gallery, QuantizedGallery):
        return gallery.without(erased)
    keep = ~np.isin(gallery.rider_ids.astype(str), erased)
    return Gallery([str(r) for r in gallery.rider_ids[keep]], gallery.embeddings[keep])


def _code_aad(bus_id: str, rider_id: str) -> bytes:
    return f"facefare-bus-code|{bus_id}|{rider_id}".encode()


def _aad(bus_id: str, rider_id: str, idx: int) -> bytes:
    return f"facefare-bus-template|{bus_id}|{rider_id}|{idx}".encode()


class BusGallery:
    """One bus's gallery: ``version``, ``apply``/``handle`` deltas, ``gallery()`` for the matcher."""

    def __init__(
        self,
        path: Path,
        bus_id: str,
        secret: bytes,
        model_sha256: str,
        cloud_key: Ed25519PublicKey,
        *,
        bus_key: Ed25519PrivateKey | None = None,
        sync_timeout_s: float = 10.0,
        fast_min_size: int = 20_000,
        busy_timeout_s: float = 5.0,
        resync_backoff_s: float = 2.0,
    ) -> None:
        self.path = Path(path)
        self.bus_id = bus_id
        self.model_sha256 = model_sha256
        self.cloud_key = cloud_key
        self.bus_key = bus_key
        self.sync_timeout_s = sync_timeout_s
        self.fast_min_size = fast_min_size
        self._delta_key, self._store_key = derive_keys(secret)
        self.code_key = code_key(secret)  # edge.door.second_factor checks codes under it
        self.lock = threading.RLock()
        self.rejected: Counter[str] = Counter()
        self.pending: dict[int, tuple[GalleryDelta, Opened]] = {}  # base_version -> delta not yet applicable
        self.publish: Callable[[str, bytes], Any] | None = None
        self._syncing_since: float | None = None
        self._head = 0
        self.wiped = False  # the store was emptied for a new model: ask the cloud for everything
        self.corrupt_detail: str | None = None  # why a damaged gallery was discarded at start
        self.resync_backoff_s = resync_backoff_s
        #: (base, version) of every delta applied since this object was made, in order (tests, audits).
        self.applied: list[tuple[int, int]] = []
        self._resync_timer: threading.Timer | None = None
        self._busy_timeout_s = busy_timeout_s
        try:
            self._open()
            self._riders: dict[str, tuple[str, np.ndarray]] = self._load()
        except InsecureFileError:
            raise
        except Exception as exc:
            # A damaged gallery is no reason to stop the bus: the cloud holds every template. It is
            # discarded (not kept aside: it may hold erased riders' templates) and resent whole.
            log.error("gallery %s is damaged (%s: %s); discarding it and asking the cloud for a full resend",
                      self.path, type(exc).__name__, exc)  # fmt: skip
            self.corrupt_detail = f"{type(exc).__name__}: {exc}"[:200]
            with contextlib.suppress(Exception):
                self.db.close()
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(str(self.path) + suffix).unlink(missing_ok=True)
            self._open()
            self._riders = self._load()
            self.wiped = True  # connected() asks for everything since version 0
        self._gallery: Gallery | QuantizedGallery = self._build()
        self._stale = False
        self._generation = 0
        self._templates = sum(len(e) for _, e in self._riders.values())
        self._timer: threading.Timer | None = None

    def _open(self) -> None:
        private_file(self.path, "bus gallery")  # encrypted templates and rider ids: owner only (0600)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                  timeout=self._busy_timeout_s)  # fmt: skip
        # WAL: one fsync per applied delta; after an erasure the WAL is checkpointed and truncated so
        # the erased templates' pages survive nowhere (secure_delete zeroes them in the database).
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "secure_delete=ON", "foreign_keys=ON"):
            self.db.execute(f"PRAGMA {pragma}")
        upgrade(self.db, MIGRATIONS, f"bus gallery {self.path}")
        self._check_model()
        self._version = int(self._meta("version", "0"))

    def _meta(self, key: str, default: str = "") -> str:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def _check_model(self) -> None:
        stored = self._meta("model_sha256")
        if stored and stored != self.model_sha256:
            log.warning("gallery %s holds templates of model %s..., this bus runs %s...: emptied, asking for a "
                        "full resend", self.path, stored[:12], self.model_sha256[:12])  # fmt: skip
            with self.lock:
                self.db.execute("BEGIN IMMEDIATE")
                self.db.execute("DELETE FROM templates")
                self.db.execute("DELETE FROM codes")
                self.db.execute("DELETE FROM riders")
                self.db.execute("DELETE FROM meta")
                self.db.execute("COMMIT")
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self.wiped = True
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('model_sha256', ?)", (self.model_sha256,))

    @property
    def version(self) -> int:
        """The version of the applied gallery (committed; read without touching the database)."""
        return self._version

    @property
    def pending_erasures(self) -> int:
        """Erasures received but not yet applied (they wait for an earlier delta)."""
        with self.lock:
            return sum(isinstance(op, EraseOp) for _, (ops, _e) in self.pending.values() for op in ops.ops)

    def _load(self) -> dict[str, tuple[str, np.ndarray]]:
        rows: dict[str, list[np.ndarray]] = {}
        concessions = dict(self.db.execute("SELECT rider_id, concession FROM riders").fetchall())
        for rider, idx, nonce, ct in self.db.execute("SELECT rider_id, idx, nonce, ciphertext FROM templates "
                                                     "ORDER BY rider_id, idx"):  # fmt: skip
            data = unseal(self._store_key, nonce, ct, _aad(self.bus_id, rider, idx))
            rows.setdefault(rider, []).append(np.frombuffer(data, np.float32))
        return {r: (concessions[r], np.stack(v)) for r, v in rows.items()}

    def _build(self, riders: dict[str, tuple[str, np.ndarray]] | None = None) -> Gallery | QuantizedGallery:
        riders = self._riders if riders is None else riders
        ids = [r for r, (_, emb) in riders.items() for _ in range(len(emb))]
        emb = np.concatenate([e for _, e in riders.values()]) if ids else np.zeros((0, DIM), np.float32)
        if len(ids) >= self.fast_min_size:
            return QuantizedGallery(ids, emb, min_size=self.fast_min_size)
        return Gallery(ids, emb)

    def gallery(self) -> Gallery | QuantizedGallery:
        """The current matcher (replaced, never modified, when a delta is applied).

        Erased riders leave the matcher when their delta commits. The matcher with the delta's
        additions and updates is built in the background; for a small gallery (below
        ``fast_min_size`` templates, a rebuild of milliseconds) a caller that comes first builds
        it itself, so its matches always reflect every applied delta. A large gallery keeps
        matching on the previous riders (minus the erased) until its rebuild is swapped in.
        """
        if self._stale and self._templates < self.fast_min_size:
            while self._stale:
                self.refresh()
        return self._gallery

    def refresh(self) -> None:
        """Build the matcher of the applied deltas (outside the lock) and swap it in (one assignment)."""
        with self.lock:
            if not self._stale:
                return
            generation, riders = self._generation, self._riders
        gallery = self._build(riders)
        with self.lock:
            if generation == self._generation:  # no delta was applied meanwhile
                self._gallery = gallery
                self._stale = False

    def _refresh_soon(self, delay_s: float = 0.2) -> None:
        """Rebuild once a burst of deltas is over, not after each of them."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = threading.Timer(delay_s, self.refresh)
        self._timer.daemon = True
        self._timer.start()

    def match(self, query: np.ndarray) -> Match:
        """Match against the current gallery, so a ``BusGallery`` can stand where a ``Gallery`` does."""
        return self.gallery().match(query)

    @property
    def riders(self) -> list[str]:
        """The rider ids held, sorted (a property, as ``Gallery.riders``)."""
        return sorted(self._riders)

    @property
    def rider_count(self) -> int:
        """How many riders are held (without sorting a million ids: the pipeline asks on every delta)."""
        return len(self._riders)

    def concession(self, rider_id: str) -> str | None:
        found = self._riders.get(rider_id)
        return found[0] if found else None

    # -- readiness after a reconnection -----------------------------------------------------------

    def connected(self, client: Any = None) -> None:
        """Call on every (re)connection: hold charges until the gallery head is in (or the timeout)."""
        with self.lock:
            self._syncing_since = time.monotonic()
            self._head = 0
        if client is not None:
            client.subscribe(topic_for("gallery", self.bus_id), qos=1)
        # Always say which version we hold: deltas expire at the broker, so a bus away for longer
        # than their expiry gets none queued (maybe no retained head either); the cloud then
        # resends the changes since this version. A first start or a wiped store asks outright.
        self.send_ack(resync=self.wiped and self.version == 0)

    @property
    def ready(self) -> bool:
        """May the bus charge? False right after a reconnection until it holds the newest delta."""
        with self.lock:
            if self._syncing_since is None:
                return True
            if self._head and self.version >= self._head:
                self._syncing_since = None
                log.info("gallery %s: in sync at version %d", self.bus_id, self.version)
                return True
            if time.monotonic() - self._syncing_since > self.sync_timeout_s:
                log.warning("gallery %s: no gallery head within %.0f s of reconnecting; charging with version %d",
                            self.bus_id, self.sync_timeout_s, self.version)  # fmt: skip
                self._syncing_since = None
                return True
            return False

    def wait_ready(self, timeout_s: float) -> bool:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.ready:
                return True
            time.sleep(0.02)
        return self.ready

    # -- MQTT -------------------------------------------------------------------------------------

    def attach(self, client: Any) -> None:
        """Route this bus's ``gallery`` topic of a paho client here and publish acks through it.

        Chains the client's ``on_connect`` so every (re)connection re-subscribes (the broker then
        sends the retained head) and holds charges until the gallery is in sync.
        """
        topic = topic_for("gallery", self.bus_id)
        self.publish = lambda t, payload: client.publish(t, payload, qos=1)
        client.message_callback_add(topic, lambda c, u, msg: self.handle(msg.topic, msg.payload, bool(msg.retain)))
        previous = client.on_connect

        def on_connect(c: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
            if previous is not None:
                previous(c, userdata, flags, reason, props)
            if not getattr(reason, "is_failure", False):
                self.connected(c)

        client.on_connect = on_connect
        if client.is_connected():
            self.connected(client)

    def send_ack(self, erased: list[str] | None = None, *, resync: bool = False) -> None:
        if self.publish is None or self.bus_key is None:
            return
        body = GalleryAck(version=self.version, erased=erased or [], resync=resync)
        self.publish(topic_for("gallery_ack", self.bus_id), encode(Envelope.make("gallery_ack", self.bus_id, body),
                                                                    self.bus_key))  # fmt: skip

    # -- applying deltas --------------------------------------------------------------------------

    def handle(self, topic: str, payload: bytes, retained: bool = False) -> str:
        """Check and apply one received ``gallery`` message; returns what happened (never raises).

        Outcomes: ``applied``, ``old`` (already held), ``pending`` (out of order, kept aside), or
        ``rejected:<reason>`` with reason a protocol reject reason, ``model``, ``tampered`` or ``schema``.
        """
        try:
            env = parse(topic, payload, {CLOUD: self.cloud_key}.get, check_time=False)
        except ProtocolError as exc:
            return self._reject(exc.reason, str(exc))
        if env.type != "gallery" or not isinstance(env.body, GalleryDelta):
            return self._reject("topic", f"{env.type} on the gallery topic")
        if retained:
            with self.lock:
                self._head = max(self._head, env.body.version)
        try:
            return self.apply(env.body)
        except Exception as exc:
            # gallery.db locked past its timeout, a full disk...: the delta is lost with this
            # message (the broker has it as delivered), so ask the cloud again from this version.
            self.rejected["apply_failed"] += 1
            log.exception("gallery %s: delta %d->%d could not be applied (%s); asking for a resync", self.bus_id,
                          env.body.base_version, env.body.version, exc)  # fmt: skip
            self._resync_soon(env.body.version)
            return "failed"

    def _resync_soon(self, wanted: int, delay_s: float | None = None) -> None:
        """Ask the cloud for the changes since our version after ``delay_s``, again with a doubling
        delay (at most 5 min) until the gallery reaches ``wanted``."""
        delay = self.resync_backoff_s if delay_s is None else delay_s

        def fire() -> None:
            if self.version >= wanted:
                return
            try:
                self.send_ack(resync=True)
            except Exception:
                log.exception("gallery %s: cannot ask for a resync", self.bus_id)
            self._resync_soon(wanted, min(delay * 2, 300.0))

        with self.lock:
            if self._resync_timer is not None:
                self._resync_timer.cancel()
            self._resync_timer = threading.Timer(delay, fire)
            self._resync_timer.daemon = True
            self._resync_timer.start()

    def _reject(self, reason: str, detail: str) -> str:
        self.rejected[reason] += 1
        log.warning("gallery %s: delta refused (%s): %s", self.bus_id, reason, detail)
        return f"rejected:{reason}"

    def apply(self, body: GalleryDelta) -> str:
        """Apply a delta whose envelope was already checked (see :meth:`handle`)."""
        with self.lock:
            if body.model_sha256 != self.model_sha256:
                return self._reject("model", f"delta {body.version} is for model {body.model_sha256[:12]}..., "
                                             f"this bus runs {self.model_sha256[:12]}...")  # fmt: skip
            current = self.version
            if body.version <= current:
                return "old"
            try:
                opened = open_delta(self._delta_key, self.bus_id, body)
            except DeltaError as exc:
                return self._reject(exc.reason, str(exc))
            if body.base_version != current:
                self.pending[body.base_version] = (body, opened)
                self.rejected["out_of_order"] += 1
                log.warning("gallery %s: delta %d->%d out of order at version %d; kept aside, asking for a resend",
                            self.bus_id, body.base_version, body.version, current)  # fmt: skip
                self.send_ack(resync=True)
                return "pending"
            erased = self._commit(body, opened)
            self.send_ack(erased)
            while self.version in self.pending:  # a delta that arrived early may now fit
                nxt, nxt_ops = self.pending.pop(self.version)
                if nxt.version > self.version:
                    self.send_ack(self._commit(nxt, nxt_ops))
            self.pending = {b: d for b, d in self.pending.items() if d[0].version > self.version}
            return "applied"

    def _commit(self, body: GalleryDelta, opened: Opened) -> list[str]:
        """Write the ops and the new version in one transaction, then mark the matcher for a rebuild."""
        ops, decoded = opened
        riders = dict(self._riders)
        erased: list[str] = []
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("DELETE FROM templates WHERE rider_id = ?", [(op.rider_id,) for op in ops.ops])
            db.executemany("DELETE FROM codes WHERE rider_id = ?", [(op.rider_id,) for op in ops.ops])
            rows, people, codes = [], [], []
            for op, emb in zip(ops.ops, decoded, strict=True):
                if isinstance(op, EraseOp) or emb is None:
                    riders.pop(op.rider_id, None)
                    erased.append(op.rider_id)
                    continue
                people.append((op.rider_id, op.concession))
                for idx, vec in enumerate(emb):
                    nonce, ct = seal(self._store_key, vec.tobytes(), _aad(self.bus_id, op.rider_id, idx))
                    rows.append((op.rider_id, idx, nonce, ct))
                riders[op.rider_id] = (op.concession, emb)
                if (hashed := op.code_hash()) is not None:
                    codes.append((op.rider_id, *seal(self._store_key, hashed, _code_aad(self.bus_id, op.rider_id))))
            db.executemany("DELETE FROM riders WHERE rider_id = ?", [(r,) for r in erased])
            db.executemany("INSERT OR REPLACE INTO riders VALUES (?, ?)", people)
            db.executemany("INSERT INTO templates VALUES (?, ?, ?, ?)", rows)
            db.executemany("INSERT INTO codes VALUES (?, ?, ?)", codes)
            db.execute("INSERT OR REPLACE INTO meta VALUES ('version', ?)", (str(body.version),))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if erased:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._riders = riders
        self._version = body.version
        self.applied.append((body.base_version, body.version))
        self._generation += 1
        self._templates = sum(len(e) for _, e in riders.values())
        if erased:  # erasures reach the matcher now, in one assignment; the rest with the rebuild
            self._gallery = _without(self._gallery, erased)
        self._stale = True  # matches from now on use a matcher of this version (see gallery())
        self._refresh_soon()
        log.info("gallery %s: version %d -> %d (%d ops, %d erased, %d riders)", self.bus_id, body.base_version,
                 body.version, len(ops.ops), len(erased), len(riders))  # fmt: skip
        return erased

    def code_hash(self, rider_id: str) -> bytes | None:
        """The keyed hash of the rider's second-factor code on this bus (None: they chose none)."""
        with self.lock:
            row = self.db.execute("SELECT nonce, ciphertext FROM codes WHERE rider_id = ?", (rider_id,)).fetchone()
        return None if row is None else unseal(self._store_key, row[0], row[1], _code_aad(self.bus_id, rider_id))

    def stored_bytes(self) -> bytes:
        """The raw bytes of the gallery file (and any journal), for checks that erased data is gone."""
        out = b""
        for suffix in ("", "-journal", "-wal"):
            p = Path(str(self.path) + suffix)
            if p.exists():
                out += p.read_bytes()
        return out

    def sealed_templates(self) -> list[bytes]:
        """The ciphertexts currently stored (for tests and audits)."""
        with self.lock:
            return [r[0] for r in self.db.execute("SELECT ciphertext FROM templates")]

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._resync_timer is not None:
            self._resync_timer.cancel()
        with self.lock:
            self.db.close()
