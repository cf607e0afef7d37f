"""The bus side of the sync: drain the ledger's outbox to the cloud and empty it only on the cloud's ack.

:class:`BusSync` keeps one MQTT connection as the bus (its own client id and a persistent session,
so QoS 1 acks the cloud sends while the bus is away wait at the broker). It

* publishes the outbox in order, oldest fare first, in signed ``fares`` messages of up to
  ``batch_size`` fares (QoS 1), with at most ``max_inflight_batches`` waiting for an ack;
* removes outbox rows only through :meth:`edge.fares.ledger.Ledger.ack`, when a ``ack`` message signed by
  the cloud's key names them; nothing else ever empties the outbox;
* sends again what is not acknowledged after ``ack_timeout_s`` or after a reconnection, in a new
  signed message (the cloud deduplicates by fare id, so a repeat is harmless);
* publishes a retained ``heartbeat`` (outbox backlog, oldest unsent fare, plus ``status_fields()``
  from the caller: gallery version, camera health...) on connect and every ``heartbeat_interval_s``;
* leaves a signed ``offline`` status as its MQTT last will (retained), so the fleet sees a lost bus;
* publishes door decisions queued with :meth:`report_decision` (best effort, no images);
* routes other verified cloud messages (``gallery``) to handlers registered with :meth:`on`, or
  lets another feature hook the MQTT client itself (``configure(client)``, called before connecting).

paho reconnects by itself with a doubling delay (``[mqtt]`` reconnect_min_s..reconnect_max_s), so
broker restarts and days without network only delay the outbox. All ledger work happens in the
thread that calls :meth:`BusSync.run` (or :meth:`BusSync.step`); the MQTT thread only queues.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from paho.mqtt.subscribeoptions import SubscribeOptions
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cloud_sync import protocol
from cloud_sync.mqtt import MqttConfig, make_client
from cloud_sync.protocol import (
    CLOUD,
    MAX_FARES_PER_MESSAGE,
    PREFIX,
    Ack,
    DecisionEvent,
    Envelope,
    Fare,
    Fares,
    Heartbeat,
    Offline,
    ProtocolError,
    ReplayGuard,
    topic_for,
)
from edge.fares.ledger import Ledger

log = logging.getLogger(__name__)

Handler = Callable[[Envelope], None]
#: Door decisions kept for the dashboard while the broker is unreachable.
DECISION_QUEUE = 200


class SyncConfig(BaseModel):
    """The ``[sync]`` section: how the bus talks to the cloud ledger."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    key_file: Path | None = Field(
        None, description="This bus's Ed25519 private key (PEM) that signs its messages; default <data_dir>/bus_key.pem"
    )
    cloud_public_key: str = Field(
        "", description="The cloud's Ed25519 public key (one line of base64, from 'facefare cloud keygen')"
    )
    batch_size: int = Field(
        MAX_FARES_PER_MESSAGE, ge=1, le=MAX_FARES_PER_MESSAGE, description="Most fares in one message"
    )
    max_inflight_batches: int = Field(4, ge=1, le=100, description="Messages of fares waiting for an ack at once")
    ack_timeout_s: int = Field(30, ge=1, description="Send fares again if the cloud has not acknowledged them by then")
    heartbeat_interval_s: int = Field(60, ge=1, description="Seconds between retained status heartbeats")

    def resolve_key_file(self, data_dir: Path) -> Path:
        if self.key_file is None:
            return Path(data_dir) / "bus_key.pem"
        return self.key_file if self.key_file.is_absolute() else Path(data_dir) / self.key_file


@dataclass
class _Batch:
    fare_ids: set[str]
    sent_at: float
    msg_id: str


@dataclass
class SyncStats:
    """Counts of this sync since it started."""

    published_messages: int = 0
    published_fares: int = 0
    resent_fares: int = 0
    acked_fares: int = 0
    refused_messages: int = 0
    connects: int = 0
    quarantined_fares: int = 0
    failed_rounds: int = 0
    rejected_by_cloud: list[tuple[str, str]] = field(default_factory=list)


class BusSync:
    """Syncs one bus's :class:`~edge.fares.ledger.Ledger` outbox to the cloud (see the module docstring)."""

    def __init__(
        self,
        bus_id: str,
        ledger: Ledger,
        key: Ed25519PrivateKey,
        cloud_key: Ed25519PublicKey,
        mqtt: MqttConfig,
        *,
        batch_size: int = MAX_FARES_PER_MESSAGE,
        max_inflight_batches: int = 4,
        ack_timeout_s: float = 30.0,
        heartbeat_interval_s: float = 60.0,
        status_fields: Callable[[], dict[str, Any]] | None = None,
        client_id: str | None = None,
        configure: Callable[[Any], None] | None = None,
        clock_ms: Callable[[], int] = protocol.now_ms,
    ) -> None:
        if not 1 <= batch_size <= MAX_FARES_PER_MESSAGE:
            raise ValueError(f"batch_size must be 1..{MAX_FARES_PER_MESSAGE}")
        self.bus_id = bus_id
        self.ledger = ledger
        self.key = key
        self.cloud_key = cloud_key
        self.mqtt = mqtt
        self.batch_size = batch_size
        self.max_inflight = max_inflight_batches
        self.ack_timeout_s = ack_timeout_s
        self.heartbeat_interval_s = heartbeat_interval_s
        self.status_fields = status_fields
        self.client_id = client_id or mqtt.client_id or bus_id
        self.configure = configure
        self.clock_ms = clock_ms  # this bus's wall clock, epoch ms (a test can set it wrong)
        self.stats = SyncStats()
        self.connected = threading.Event()
        self.subscribed = threading.Event()  # the broker confirmed the subscription to the cloud's topics
        self._inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._reconnected = threading.Event()
        self._handlers: dict[str, list[Handler]] = {}
        self._inflight: dict[str, _Batch] = {}
        self._last_heartbeat = 0.0
        self._guard = ReplayGuard()
        self._client: Any = None
        # Door decisions for the fleet dashboard: not money (the ledger holds that), so a bounded,
        # best-effort queue; when the bus is offline for long, the oldest are dropped.
        self._decisions: deque[DecisionEvent] = deque(maxlen=DECISION_QUEUE)
        #: This bus's clock minus the cloud's, in ms: the smallest (now - sent_ms) of the cloud's
        #: messages since connecting (a message queued at the broker only makes it larger).
        self.clock_skew_ms: int | None = None
        self._skew_fresh = False
        self._skew_logged = False
        #: None while rounds succeed; else the last round's error (in the heartbeat, logged).
        self.last_error: str | None = None
        #: time.monotonic() of the last round, finished or failed: a supervisor's liveness check.
        self.last_round_at = time.monotonic()

    # -- wiring ----------------------------------------------------------------------------

    def on(self, msg_type: str, handler: Handler) -> None:
        """Call ``handler(envelope)`` for each verified cloud message of ``msg_type`` (e.g. ``gallery``).

        Handlers run in the sync's thread; one that raises is logged and the sync carries on.
        """
        if msg_type not in protocol.SCHEMAS or protocol.SCHEMAS[msg_type][1] != "cloud" or msg_type == "ack":
            raise ValueError(f"no handlers for {msg_type!r}: only cloud-to-bus messages other than ack")
        self._handlers.setdefault(msg_type, []).append(handler)

    def report_decision(self, event: DecisionEvent) -> None:
        """Queue a door decision for the fleet (any thread); published on the sync's next round."""
        self._decisions.append(event)

    def _sign(self, msg_type: str, body: protocol.Strict) -> bytes:
        return protocol.encode(Envelope.make(msg_type, self.bus_id, body, sent_ms=self.clock_ms()), self.key)

    # -- MQTT callbacks (network thread) ----------------------------------------------------

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.error("broker refused bus %s: %s", self.bus_id, reason)
            return
        client.subscribe(f"{PREFIX}/cloud/{self.bus_id}/#", options=SubscribeOptions(qos=1))
        self.stats.connects += 1
        self._skew_fresh = False  # a new connection: measure the skew again
        self._reconnected.set()
        self.connected.set()
        log.info("bus %s connected to the broker (session present: %s)", self.bus_id, flags.session_present)

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        if all(not getattr(r, "is_failure", False) for r in reasons):
            self.subscribed.set()
        else:
            log.error("bus %s: the broker refused the subscription to the cloud's topics: %s", self.bus_id, reasons)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connected.clear()
        self.subscribed.clear()
        log.warning("bus %s lost the broker (%s); paho reconnects", self.bus_id, reason)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self._inbox.put((msg.topic, bytes(msg.payload)))

    # -- running ---------------------------------------------------------------------------

    def start(self) -> None:
        """Connect asynchronously (the last will is signed now) and start the MQTT network thread."""
        will = (topic_for("offline", self.bus_id), self._sign("offline", Offline()), 1, True)
        client = make_client(self.mqtt, self.client_id, clean_start=False, will=will)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = lambda c, u: log.warning("bus %s cannot reach the broker at %s:%d; paho retries",
                                                          self.bus_id, self.mqtt.host, self.mqtt.port)  # fmt: skip
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        if self.configure is not None:
            self.configure(client)  # e.g. enrollment's BusGallery.attach: its own topic callback, chained on_connect
        client.connect_async()
        client.loop_start()
        self._client = client

    def run(self, stop: threading.Event, poll_s: float = 0.1, max_backoff_s: float = 30.0) -> None:
        """Sync until ``stop`` is set, then publish an offline status and disconnect.

        A round that fails (the ledger locked past its busy timeout, a full disk, a corrupt page,
        anything) is logged, reported in the heartbeat (``sync``) and retried after a doubling
        pause up to ``max_backoff_s``: nothing it did is lost (unacknowledged fares stay in the
        outbox and are sent again), so the thread never dies of it.
        """
        if self._client is None:
            self.start()
        delay = poll_s
        try:
            while not stop.is_set():
                try:
                    self.step()
                except Exception as exc:
                    self.stats.failed_rounds += 1
                    self.last_error = f"{type(exc).__name__}: {exc}"[:200]
                    log.exception("bus %s: sync round failed; retrying in %.1f s", self.bus_id, delay)
                    self._try_heartbeat()
                    delay = min(max(delay, poll_s) * 2, max_backoff_s)
                else:
                    if self.last_error is not None:
                        log.info("bus %s: sync recovered", self.bus_id)
                    self.last_error = None
                    delay = poll_s
                self.last_round_at = time.monotonic()
                stop.wait(delay)
        finally:
            self.close()

    def _try_heartbeat(self) -> None:
        """Tell the fleet the sync is failing, if the broker is reachable (best effort)."""
        if not self.connected.is_set() or self._client is None:
            return
        try:
            self._heartbeat()
        except Exception as exc:  # the ledger itself may be what fails: say so without its backlog
            log.warning("bus %s: heartbeat failed too (%s)", self.bus_id, exc)
            try:
                body = Heartbeat(outbox_backlog=0, sync={"ok": False, "detail": (self.last_error or "")[:200]})
                self._client.publish(topic_for("heartbeat", self.bus_id), self._sign("heartbeat", body), qos=1,
                                     retain=True)  # fmt: skip
            except Exception:
                log.exception("bus %s: cannot publish a heartbeat", self.bus_id)

    def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        if self.connected.is_set():
            info = client.publish(topic_for("offline", self.bus_id), self._sign("offline", Offline()), qos=1,
                                  retain=True)  # fmt: skip
            with contextlib.suppress(RuntimeError, ValueError):  # not connected any more: the will says it
                info.wait_for_publish(2)
        client.disconnect()
        client.loop_stop()

    def step(self) -> None:
        """One round: apply what the cloud sent, publish due fares, send a heartbeat when due."""
        self._drain_inbox()
        if not self.connected.is_set():
            return
        if self._reconnected.is_set():
            self._reconnected.clear()
            if self._inflight:
                log.info("bus %s: sending %d unacknowledged batches again after reconnecting", self.bus_id,
                         len(self._inflight))  # fmt: skip
                self._forget_inflight()
            self._heartbeat()
        now = time.monotonic()
        for msg_id, batch in list(self._inflight.items()):
            if now - batch.sent_at > self.ack_timeout_s:
                log.info("bus %s: no ack for message %s within %s s; sending its fares again", self.bus_id, msg_id,
                         self.ack_timeout_s)  # fmt: skip
                self.stats.resent_fares += len(batch.fare_ids)
                del self._inflight[msg_id]
        self._publish_outbox()
        while self._decisions:
            event = self._decisions.popleft()
            self._client.publish(topic_for("decision", self.bus_id), self._sign("decision", event), qos=1)
        if now - self._last_heartbeat >= self.heartbeat_interval_s:
            self._heartbeat()

    def _forget_inflight(self) -> None:
        self.stats.resent_fares += sum(len(b.fare_ids) for b in self._inflight.values())
        self._inflight.clear()

    def _publish_outbox(self) -> None:
        free = self.max_inflight - len(self._inflight)
        if free <= 0:
            return
        pending = {fid for b in self._inflight.values() for fid in b.fare_ids}
        rows = self.ledger.outbox(limit=len(pending) + free * self.batch_size)
        todo = []
        for r in rows:
            if r["fare_id"] in pending:
                continue
            try:
                todo.append(Fare.model_validate(r["payload"]))
            except ValidationError as exc:
                # Sending it can never succeed and it would hold up every fare after it: set it aside.
                err = exc.errors()[0]
                reason = f"protocol refuses {'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
                if self.ledger.quarantine(r["fare_id"], reason):
                    self.stats.quarantined_fares += 1
        for start in range(0, min(len(todo), free * self.batch_size), self.batch_size):
            fares = todo[start : start + self.batch_size]
            env = Envelope.make("fares", self.bus_id, Fares(fares=fares), sent_ms=self.clock_ms())
            payload = protocol.encode(env, self.key)
            self._client.publish(topic_for("fares", self.bus_id), payload, qos=1)
            self._inflight[env.msg_id] = _Batch({f.fare_id for f in fares}, time.monotonic(), env.msg_id)
            self.stats.published_messages += 1
            self.stats.published_fares += len(fares)

    def backlog(self) -> tuple[int, int | None]:
        """Outbox rows waiting and the queue time of the oldest (ms since 1970), or None."""
        count = self.ledger.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        first = self.ledger.outbox(limit=1)
        oldest = None
        if first:
            oldest = int(datetime.fromisoformat(first[0]["queued_at"]).timestamp() * 1000)
        return int(count), oldest

    def _heartbeat(self) -> None:
        count, oldest = self.backlog()
        fields: dict[str, Any] = {
            "outbox_backlog": count,
            "oldest_unsent_ms": oldest,
            "clock_skew_ms": self.clock_skew_ms,
            "sync": {"ok": self.last_error is None, "detail": self.last_error or ""},
            "quarantined_fares": self.stats.quarantined_fares,
        }
        usage = shutil.disk_usage(Path(self.ledger.path).parent) if self.ledger.path != ":memory:" else None
        if usage is not None:
            fields["disk_free_bytes"] = usage.free
            if usage.free < self.ledger.min_free_bytes:  # the ledger refuses charges below this
                fields["disk"] = {"ok": False, "detail": f"{usage.free} bytes free, charges are refused"}
        if self.status_fields is not None:
            try:
                fields.update(self.status_fields())
            except Exception:
                log.exception("bus %s: status_fields() failed; heartbeat sent without them", self.bus_id)
        try:
            body = Heartbeat.model_validate(fields)
        except ValidationError as exc:
            log.error("bus %s: invalid heartbeat fields (%s); sending the backlog only", self.bus_id, exc.errors()[0])
            body = Heartbeat(outbox_backlog=count, oldest_unsent_ms=oldest)
        self._client.publish(topic_for("heartbeat", self.bus_id), self._sign("heartbeat", body), qos=1, retain=True)
        self._last_heartbeat = time.monotonic()

    # -- what the cloud sends --------------------------------------------------------------

    def _drain_inbox(self) -> None:
        while True:
            try:
                topic, payload = self._inbox.get_nowait()
            except queue.Empty:
                return
            try:
                # No freshness check: acks are idempotent by fare id, gallery deltas by version, so
                # a bus whose clock is far off must still take them; the offset is measured instead.
                env = protocol.parse(topic, payload, {CLOUD: self.cloud_key}.get, check_time=False)
                self._guard.check(env)
                self._measure_skew(env)
            except ProtocolError as exc:
                self.stats.refused_messages += 1
                log.warning("bus %s refused a message on %s: %s", self.bus_id, topic[:120], exc)
                continue
            if isinstance(env.body, Ack):
                self._apply_ack(env.body)
            for handler in self._handlers.get(env.type, ()):
                try:
                    handler(env)
                except Exception:
                    log.exception("bus %s: %s handler failed", self.bus_id, env.type)

    def _measure_skew(self, env: Envelope) -> None:
        skew = self.clock_ms() - env.sent_ms  # this clock minus the cloud's, plus the delivery time
        if not self._skew_fresh or self.clock_skew_ms is None or skew < self.clock_skew_ms:
            self.clock_skew_ms = skew
        self._skew_fresh = True
        if abs(skew) > protocol.DEFAULT_WINDOW_MS and not self._skew_logged:
            self._skew_logged = True
            log.warning("bus %s: this clock is %d s off the cloud's (sync carries on; fix the clock)", self.bus_id,
                        skew // 1000)  # fmt: skip

    def _apply_ack(self, ack: Ack) -> None:
        rejected = {r.fare_id: r.reason for r in ack.rejected}
        for r in ack.rejected:
            log.error("bus %s: the cloud refused fare %s for good (%s); it stays in the bus ledger", self.bus_id,
                      r.fare_id, r.reason)  # fmt: skip
            self.stats.rejected_by_cloud.append((r.fare_id, r.reason))
        ids = [*ack.fare_ids, *rejected]
        self.stats.acked_fares += self.ledger.ack(ack.fare_ids, rejected)
        done = set(ids)
        for msg_id, batch in list(self._inflight.items()):
            batch.fare_ids -= done
            if not batch.fare_ids:
                del self._inflight[msg_id]

    @property
    def inflight_fares(self) -> int:
        return sum(len(b.fare_ids) for b in self._inflight.values())
