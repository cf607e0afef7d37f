"""The cloud side of gallery distribution: per-bus versioned deltas, erasure and its confirmations.

For every registered bus the cloud remembers what it has published to it (rider id -> rider
revision) and its version chain. :meth:`GalleryDistributor.sync` compares that with what the bus
should hold now (every active rider with templates of the current model, limited to the rider's
``buses`` and ``zones`` when set: a bus holds the riders listing it and the riders of its
zones) and publishes the difference as deltas ``base_version -> version``: erasures
first, then additions and updates, cut so each delta fits one MQTT message. Each delta is sealed
for that bus alone (``cloud_sync.gallery.delta``), signed with the cloud key and published with QoS 1,
*retained* (the newest delta is the bus's "gallery head" after a reconnection).

The history table ``gallery_log`` keeps, per bus and version, which riders changed and how, with no
biometric data; when a bus asks for a resend from version ``v`` (``gallery_ack`` with ``resync``),
the riders touched after ``v`` are sent again in their *current* state, so an erased rider's
templates are never re-sent.

Erasure (:meth:`GalleryDistributor.erase`): the templates are deleted from the store, the rider
is marked erased and audited, an erase delta goes to every bus that was sent the rider, and each
bus's ``gallery_ack`` at or past that version is recorded as its confirmation (also audited).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_sync.gallery.delta import code_key, derive_keys, op_size, put_op, seal_delta
from cloud_sync.protocol import (
    CLOUD,
    MAX_PAYLOAD_BYTES,
    Envelope,
    GalleryAck,
    KeyLookup,
    ProtocolError,
    ReplayGuard,
    encode,
    parse,
    topic_for,
)
from cloud_sync.sqlite_schema import schema, statements, upgrade
from edge.door.second_factor import keyed
from enrollment.store import TemplateStore, now_iso, seal, unseal

log = logging.getLogger(__name__)

SCHEMA = """
-- When each bus's newest delta was published (unix seconds): older than the delta expiry, the
-- broker holds none of its deltas any more, and a bus reporting an older version gets a resend.
CREATE TABLE IF NOT EXISTS gallery_published (bus_id TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS gallery_buses (
    bus_id TEXT PRIMARY KEY,
    secret_nonce BLOB NOT NULL,
    secret_ct BLOB NOT NULL,
    version INTEGER NOT NULL DEFAULT 0,
    acked_version INTEGER NOT NULL DEFAULT 0,
    acked_at TEXT,
    registered_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS gallery_bus_riders (
    bus_id TEXT NOT NULL REFERENCES gallery_buses(bus_id),
    rider_id TEXT NOT NULL,
    revision INTEGER NOT NULL,
    PRIMARY KEY (bus_id, rider_id)
);
CREATE TABLE IF NOT EXISTS gallery_log (
    bus_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    rider_id TEXT NOT NULL,
    op TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS gallery_log_bus ON gallery_log(bus_id, version);
CREATE TABLE IF NOT EXISTS erasure_targets (
    rider_id TEXT NOT NULL,
    bus_id TEXT NOT NULL,
    version INTEGER,
    confirmed_version INTEGER,
    confirmed_at TEXT,
    PRIMARY KEY (rider_id, bus_id)
);
"""
#: The distribution tables' schema in the template store's file, step by step; add steps, never edit one.
# Issue 16 (second factor, zones): a step of its own, so stores made before it gain the tables.
BUS_ZONES_SCHEMA = """
CREATE TABLE IF NOT EXISTS gallery_bus_zones (
    bus_id TEXT NOT NULL REFERENCES gallery_buses(bus_id),
    zone TEXT NOT NULL,
    PRIMARY KEY (bus_id, zone)
);
"""
MIGRATIONS = schema(
    "facefare-gallery-distribution",
    [("0001_initial", statements(SCHEMA)), ("0002_bus_zones", statements(BUS_ZONES_SCHEMA))],
)
#: Room left in a message for the envelope around the ciphertext (base64 grows it by 4/3).
ENVELOPE_ROOM = 2_000


@dataclass(frozen=True)
class Published:
    bus_id: str
    base_version: int
    version: int
    ops: int
    payload: bytes


@dataclass(frozen=True)
class ErasureStatus:
    bus_id: str
    version: int | None  # the delta that carried the erase (None: not yet published)
    confirmed_version: int | None
    confirmed_at: str | None

    @property
    def confirmed(self) -> bool:
        return self.confirmed_at is not None


class GalleryDistributor:
    """Builds, seals, signs and publishes gallery deltas for the buses; records erasure confirmations."""

    def __init__(
        self,
        store: TemplateStore,
        cloud_key: Ed25519PrivateKey | None,
        model_sha256: str,
        *,
        bus_keys: KeyLookup | None = None,
        delta_bytes: int = 150_000,
        publish: Callable[[str, bytes], Any] | None = None,
        delta_expiry_s: int = 24 * 3600,
    ) -> None:
        self.store = store
        self.cloud_key = cloud_key
        self.model_sha256 = model_sha256
        self.bus_keys = bus_keys or (lambda bus: None)
        limit = (MAX_PAYLOAD_BYTES - ENVELOPE_ROOM) * 3 // 4 - 16
        self.delta_bytes = min(delta_bytes, limit)
        self.publish = publish
        self.delta_expiry_s = delta_expiry_s
        self.client: Any = None
        self.in_flight: list[Any] = []
        self.replay = ReplayGuard()
        self.lock = threading.RLock()
        with store.lock:
            upgrade(store.db, MIGRATIONS, f"gallery distribution in {store.path}")

    # -- buses --------------------------------------------------------------------------------

    def register_bus(self, bus_id: str, *, zones: list[str] | None = None, actor: str = "operator") -> bytes:
        """Create the bus's 256-bit gallery secret (returned once, to provision the bus); ``zones``: its zones."""
        import secrets

        secret = secrets.token_bytes(32)
        nonce, ct = seal(self.store.key, secret, f"facefare-bus-secret|{bus_id}".encode())
        with self.store.transaction() as db:
            if db.execute("SELECT 1 FROM gallery_buses WHERE bus_id = ?", (bus_id,)).fetchone():
                raise ValueError(f"bus {bus_id} is already registered")
            db.execute("INSERT INTO gallery_buses (bus_id, secret_nonce, secret_ct, registered_at) VALUES (?, ?, ?, ?)",
                       (bus_id, nonce, ct, now_iso()))  # fmt: skip
            self.store.audit(db, actor, "register_bus", None, bus_id=bus_id, zones=sorted(set(zones or [])))
            self._set_zones(db, bus_id, zones or [])
        return secret

    def set_bus_zones(self, bus_id: str, zones: list[str], *, actor: str = "operator") -> None:
        """The zones whose riders ``bus_id`` holds from its next delta on (riders leaving them are erased from it)."""
        with self.store.transaction() as db:
            if not db.execute("SELECT 1 FROM gallery_buses WHERE bus_id = ?", (bus_id,)).fetchone():
                raise KeyError(f"bus {bus_id} is not registered")
            self._set_zones(db, bus_id, zones)
            self.store.audit(db, actor, "bus_zones", None, bus_id=bus_id, zones=sorted(set(zones)))

    @staticmethod
    def _set_zones(db: sqlite3.Connection, bus_id: str, zones: list[str]) -> None:
        db.execute("DELETE FROM gallery_bus_zones WHERE bus_id = ?", (bus_id,))
        db.executemany("INSERT INTO gallery_bus_zones VALUES (?, ?)", [(bus_id, z) for z in sorted(set(zones))])

    def bus_zones(self, bus_id: str) -> list[str]:
        with self.store.lock:
            rows = self.store.db.execute("SELECT zone FROM gallery_bus_zones WHERE bus_id = ? ORDER BY zone", (bus_id,))
            return [r[0] for r in rows.fetchall()]

    def buses(self) -> list[dict[str, Any]]:
        with self.store.lock:
            rows = self.store.db.execute("SELECT bus_id, version, acked_version, acked_at FROM gallery_buses "
                                         "ORDER BY bus_id").fetchall()  # fmt: skip
        return [dict(r) for r in rows]

    def _secret(self, db: sqlite3.Connection, bus_id: str) -> bytes:
        row = db.execute("SELECT secret_nonce, secret_ct FROM gallery_buses WHERE bus_id = ?", (bus_id,)).fetchone()
        if row is None:
            raise KeyError(f"bus {bus_id} is not registered")
        return unseal(self.store.key, row[0], row[1], f"facefare-bus-secret|{bus_id}".encode())

    # -- deltas -------------------------------------------------------------------------------

    def _wanted(self, db: sqlite3.Connection, bus_id: str) -> dict[str, tuple[int, str]]:
        """rider id -> (revision, concession) of the riders this bus should hold now."""
        rows = db.execute(
            "SELECT r.rider_id, r.revision, r.concession, r.buses FROM riders r WHERE r.status = 'active' AND "
            "EXISTS (SELECT 1 FROM templates t WHERE t.rider_id = r.rider_id AND t.model_sha256 = ?)",
            (self.model_sha256,),
        ).fetchall()
        mine = {z for (z,) in db.execute("SELECT zone FROM gallery_bus_zones WHERE bus_id = ?", (bus_id,))}
        zones: dict[str, set[str]] = {}
        for rider, zone in db.execute("SELECT rider_id, zone FROM rider_zones"):
            zones.setdefault(rider, set()).add(zone)

        def held(rider: str, buses: str) -> bool:
            listed = [b for b in buses.split(",") if b]
            if not listed and rider not in zones:
                return True  # no buses, no zones: every bus
            return bus_id in listed or bool(zones.get(rider, set()) & mine)

        return {r[0]: (r[1], r[2]) for r in rows if held(r[0], r[3])}

    def build(self, bus_id: str, since: int | None = None) -> list[Published]:
        """Make (and record as published) the deltas that bring ``bus_id`` up to date.

        ``since``: rebuild from that version (a bus asking for a resend); default: from the last
        published version. Returns the messages to publish, oldest first (maybe none).
        """
        if self.cloud_key is None or not self.model_sha256:
            raise RuntimeError("building deltas needs the cloud's signing key and the embedding model's hash")
        with self.lock, self.store.transaction() as db:
            row = db.execute("SELECT version FROM gallery_buses WHERE bus_id = ?", (bus_id,)).fetchone()
            if row is None:
                raise KeyError(f"bus {bus_id} is not registered")
            head = int(row[0])
            sent = dict(db.execute("SELECT rider_id, revision FROM gallery_bus_riders WHERE bus_id = ?", (bus_id,)))
            wanted = self._wanted(db, bus_id)
            touched = {r for r in set(sent) | set(wanted) if sent.get(r) != (wanted[r][0] if r in wanted else None)}
            base = head
            if since is not None and since < head:
                base = since
                touched |= {r[0] for r in db.execute("SELECT DISTINCT rider_id FROM gallery_log WHERE bus_id = ? "
                                                     "AND version > ?", (bus_id, since))}  # fmt: skip
            if not touched and head > 0 and base == head:
                return []
            erases = sorted(r for r in touched if r not in wanted)
            puts = sorted(r for r in touched if r in wanted)
            ops: list[dict] = [{"op": "erase", "rider_id": r} for r in erases]
            secret = self._secret(db, bus_id)
            codes = code_key(secret)
            for rider in puts:
                templates = [t.embedding for t in self.store.templates(rider, self.model_sha256)]
                digest = self.store.code_digest(rider)
                code = keyed(codes, digest) if digest is not None else None
                ops.append(put_op("update" if rider in sent else "add", rider, wanted[rider][1], templates, code))
            delta_key, _ = derive_keys(secret)
            out = []
            for chunk in self._chunks(ops):
                version = head + 1
                body = seal_delta(delta_key, bus_id, base, version, self.model_sha256, chunk)
                payload = encode(Envelope.make("gallery", CLOUD, body), self.cloud_key)
                for op in chunk:
                    rider = op["rider_id"]
                    db.execute("INSERT INTO gallery_log VALUES (?, ?, ?, ?)", (bus_id, version, rider, op["op"]))
                    if op["op"] == "erase":
                        db.execute("DELETE FROM gallery_bus_riders WHERE bus_id = ? AND rider_id = ?", (bus_id, rider))
                        db.execute(
                            "INSERT INTO erasure_targets (rider_id, bus_id, version) SELECT ?, ?, ? WHERE EXISTS "
                            "(SELECT 1 FROM riders WHERE rider_id = ? AND status = 'erased') ON CONFLICT DO UPDATE "
                            "SET version = excluded.version WHERE confirmed_at IS NULL",
                            (rider, bus_id, version, rider),
                        )
                    else:
                        db.execute("INSERT OR REPLACE INTO gallery_bus_riders VALUES (?, ?, ?)",
                                   (bus_id, rider, wanted[rider][0]))  # fmt: skip
                out.append(Published(bus_id, base, version, len(chunk), payload))
                base = head = version
            db.execute("UPDATE gallery_buses SET version = ? WHERE bus_id = ?", (head, bus_id))
            if out:
                db.execute("INSERT OR REPLACE INTO gallery_published VALUES (?, ?)", (bus_id, time.time()))
        return out

    def _chunks(self, ops: list[dict]) -> list[list[dict]]:
        chunks: list[list[dict]] = [[]]
        size = 16
        for op in ops:
            n = op_size(op)
            if chunks[-1] and size + n > self.delta_bytes:
                chunks.append([])
                size = 16
            chunks[-1].append(op)
            size += n
        return chunks

    def sync(self, bus_id: str | None = None, since: int | None = None) -> list[Published]:
        """Build and publish the deltas of one bus (or of every registered bus); nothing without a client."""
        if self.publish is None:
            log.warning("no MQTT client: gallery changes stay unpublished until the next sync")
            return []
        buses = [bus_id] if bus_id else [b["bus_id"] for b in self.buses()]
        out: list[Published] = []
        for bus in buses:
            for msg in self.build(bus, since):
                self._send(msg)
                out.append(msg)
        return out

    def _send(self, msg: Published) -> None:
        assert self.publish is not None
        info = self.publish(topic_for("gallery", msg.bus_id), msg.payload)
        if hasattr(info, "wait_for_publish"):
            self.in_flight = [i for i in self.in_flight if not i.is_published()] + [info]
        log.info("published gallery %s %d -> %d (%d ops, %d bytes)", msg.bus_id, msg.base_version, msg.version,
                 msg.ops, len(msg.payload))  # fmt: skip

    # -- erasure ------------------------------------------------------------------------------

    def erase(self, rider_id: str, *, actor: str = "operator") -> list[Published]:
        """Erase a rider: delete their templates, audit it, publish the erase to every bus that held them."""
        with self.store.transaction() as db:
            self.store.erase(rider_id, actor=actor, db=db)
            holders = [r[0] for r in db.execute("SELECT bus_id FROM gallery_bus_riders WHERE rider_id = ?",
                                                (rider_id,))]  # fmt: skip
            for bus in holders:
                db.execute("INSERT OR IGNORE INTO erasure_targets (rider_id, bus_id) VALUES (?, ?)", (rider_id, bus))
            self.store.audit(db, actor, "erase_requested", rider_id, buses=holders)
        out = []
        for bus in holders:
            out += self.sync(bus)
        return out

    def erase_status(self, rider_id: str) -> list[ErasureStatus]:
        """Per bus that held the rider: the erase delta's version and the bus's confirmation."""
        with self.store.lock:
            rows = self.store.db.execute("SELECT bus_id, version, confirmed_version, confirmed_at FROM "
                                         "erasure_targets WHERE rider_id = ? ORDER BY bus_id", (rider_id,))  # fmt: skip
            return [ErasureStatus(*r) for r in rows.fetchall()]

    # -- acknowledgements ---------------------------------------------------------------------

    def handle(self, topic: str, payload: bytes) -> str:
        """Process one ``gallery_ack`` from a bus; returns what happened (never raises)."""
        try:
            # No freshness check: an ack is idempotent by version (a bus clock far off must still confirm).
            env = parse(topic, payload, self.bus_keys, check_time=False)
            self.replay.check(env)
        except ProtocolError as exc:
            log.warning("gallery_ack refused (%s): %s", exc.reason, exc.detail)
            return f"rejected:{exc.reason}"
        if not isinstance(env.body, GalleryAck):
            return "rejected:topic"
        try:
            return self.acknowledge(env.sender, env.body)
        except Exception:  # the store locked or full: the bus acks again with its next delta or resync
            log.exception("cannot record the gallery_ack of %s", env.sender)
            return "failed"

    def acknowledge(self, bus_id: str, ack: GalleryAck) -> str:
        """Record that ``bus_id`` holds ``ack.version``; confirm erasures; resend on request."""
        with self.store.transaction() as db:
            row = db.execute("SELECT version FROM gallery_buses WHERE bus_id = ?", (bus_id,)).fetchone()
            if row is None:
                return "unknown_bus"
            if ack.version > row[0]:
                # No bus can hold a version never published: refuse it, or it would confirm
                # erasures (and record a version) the bus never received.
                log.error("bus %s reports gallery version %d, ahead of the %d published; ignored", bus_id,
                          ack.version, row[0])  # fmt: skip
                return "rejected:ahead"
            db.execute("UPDATE gallery_buses SET acked_version = ?, acked_at = ? WHERE bus_id = ?",
                       (ack.version, now_iso(), bus_id))  # fmt: skip
            confirmed = [r[0] for r in db.execute(
                "SELECT rider_id FROM erasure_targets WHERE bus_id = ? AND version IS NOT NULL AND version <= ? "
                "AND confirmed_at IS NULL", (bus_id, ack.version))]  # fmt: skip
            for rider in confirmed:
                db.execute("UPDATE erasure_targets SET confirmed_version = ?, confirmed_at = ? WHERE rider_id = ? "
                           "AND bus_id = ?", (ack.version, now_iso(), rider, bus_id))  # fmt: skip
                self.store.audit(db, f"bus:{bus_id}", "erase_confirmed", rider, bus_id=bus_id, version=ack.version)
        if ack.resync or (ack.version < row[0] and self._expired(bus_id)):
            # Asked for, or the bus is behind and the broker no longer holds the deltas it lacks
            # (they expired while it was away): send the changes since the bus's own version.
            self.sync(bus_id, since=ack.version)
            return "resent"
        return "confirmed" if confirmed else "acked"

    def _expired(self, bus_id: str) -> bool:
        with self.store.lock:
            row = self.store.db.execute("SELECT at FROM gallery_published WHERE bus_id = ?", (bus_id,)).fetchone()
        return row is None or time.time() - float(row[0]) >= self.delta_expiry_s

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until the broker acknowledged every published delta; False if some did not make it."""
        deadline = time.monotonic() + timeout_s
        for info in self.in_flight:
            try:
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as exc:
                log.warning("a gallery delta was not published: %s", exc)
        done = all(i.is_published() for i in self.in_flight)
        self.in_flight = [i for i in self.in_flight if not i.is_published()]
        return done

    def publish_with(self, client: Any, topic: str, payload: bytes) -> Any:
        """Publish a delta through a paho client: QoS 1, retained, expiring after ``delta_expiry_s``.

        The expiry (MQTT v5) bounds how long a delta - maybe holding a template erased since -
        waits at the broker for a bus that is away, in its queue or as the retained head; a bus
        back after longer asks for the changes since its own version (``GalleryAck.resync``)."""
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.PUBLISH)
        props.MessageExpiryInterval = int(self.delta_expiry_s)
        return client.publish(topic, payload, qos=1, retain=True, properties=props)

    def attach(self, client: Any) -> None:
        """Publish deltas (QoS 1, retained) through a paho client and take ``gallery_ack`` from every bus."""
        self.client = client
        self.publish = lambda topic, payload: self.publish_with(client, topic, payload)
        pattern = topic_for("gallery_ack", "+")
        client.message_callback_add(pattern, lambda c, u, msg: self.handle(msg.topic, msg.payload))
        previous = client.on_connect

        def on_connect(c: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
            if previous is not None:
                previous(c, userdata, flags, reason, props)
            c.subscribe(pattern, qos=1)

        client.on_connect = on_connect
        if client.is_connected():
            client.subscribe(pattern, qos=1)
