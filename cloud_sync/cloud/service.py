"""The cloud ledger service: takes the buses' signed messages off the broker and settles fares exactly once.

``facefare cloud run`` runs one :class:`CloudService`. It connects as broker user ``cloud`` with a
persistent session and subscribes (QoS 1) to every bus's ``fares``, ``status``, ``decisions`` and
``gallery_ack`` topics. The MQTT network thread checks each message as it arrives
(:func:`cloud_sync.protocol.parse` against the bus keys registered in the ledger, freshness, then
:class:`~cloud_sync.protocol.ReplayGuard`) and queues it for a writer. Each writer thread has its
own database connection; a bus's ``fares`` always go to the same writer, so they are applied in
the order the bus sent them, and every other message goes to the first writer (PostgreSQL runs
two writers by default, SQLite one). For each batch of queued messages a writer:

1. counts each refusal by reason in the ledger's ``rejections`` table and logs it; the service
   carries on;
2. applies the ``fares`` messages in one transaction (:meth:`CloudLedger.ingest`: dedupe by fare id,
   a charge entry per new fare);
3. only after that commit, publishes a signed ``ack`` (QoS 1) to ``facefare/v1/cloud/<bus>/acks``
   and acknowledges the MQTT messages to the broker (manual PUBACK, in the order they arrived,
   as MQTT requires), so a crash at any point leaves the messages at the broker or the fares in
   the bus's outbox, never lost;
4. every ``settle_interval_s``, settles transfers and caps across buses (refund entries); while a
   backlog is being drained it waits for a quiet moment, at most ``SETTLE_MAX_DELAY_S``.

Other features receive verified messages through :meth:`CloudService.on` (for example
enrollment's gallery distribution takes ``gallery_ack``). SIGTERM or SIGINT stops it cleanly.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from paho.mqtt.subscribeoptions import SubscribeOptions
from pydantic import BaseModel, ConfigDict, Field

from cloud_sync import protocol
from cloud_sync.cloud.ledger import CloudLedger, FaresMessage, IngestResult, Rejection
from cloud_sync.mqtt import MqttConfig, make_client
from cloud_sync.protocol import (
    CLOUD,
    MAX_FARES_PER_MESSAGE,
    PREFIX,
    Ack,
    Envelope,
    Fares,
    ProtocolError,
    Rejected,
    ReplayGuard,
    bus_of_topic,
    topic_for,
)

log = logging.getLogger(__name__)

#: What the cloud subscribes to, for every bus.
SUBSCRIPTIONS = tuple(f"{PREFIX}/bus/+/{leaf}" for leaf in ("fares", "status", "decisions", "gallery_ack"))

Handler = Callable[[Envelope], None]
#: A fare boarded more than this after its message was sent (or after now) has an implausible time.
IMPLAUSIBLE_AHEAD_MS = 10 * 60 * 1000
#: While fares keep arriving, settlement waits for a quiet moment, but never longer than this.
SETTLE_MAX_DELAY_S = 30


class CloudConfig(BaseModel):
    """The ``[cloud]`` section: the cloud ledger service."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    database_url: str = Field(
        "", description="sqlite:///path/cloud.db or postgresql://user@host:port/db; default sqlite <data_dir>/cloud.db"
    )
    key_file: Path | None = Field(
        None, description="The cloud's Ed25519 private key (PEM) that signs acks; default <data_dir>/cloud_key.pem"
    )
    window_s: int = Field(
        protocol.DEFAULT_WINDOW_MS // 1000, ge=10, le=7 * 24 * 3600,
        description="Messages sent further than this from the cloud's clock are refused as stale",
    )  # fmt: skip
    max_batch_messages: int = Field(
        40, ge=1, le=1000, description="Most MQTT messages applied in one database transaction"
    )
    settle_interval_s: int = Field(2, ge=1, description="Seconds between settlement runs (transfers and caps)")
    writers: int = Field(
        2, ge=1, le=8, description="Writer threads, each with its own connection (PostgreSQL; SQLite uses one)"
    )

    def resolve_url(self, data_dir: Path) -> str:
        return self.database_url or f"sqlite:///{Path(data_dir) / 'cloud.db'}"

    def resolve_key_file(self, data_dir: Path) -> Path:
        if self.key_file is None:
            return Path(data_dir) / "cloud_key.pem"
        return self.key_file if self.key_file.is_absolute() else Path(data_dir) / self.key_file


@dataclass
class _Item:
    """A received message, already checked in the network thread: its envelope or why it was refused."""

    topic: str
    mid: int
    qos: int
    retain: bool
    env: Envelope | None
    refusal: ProtocolError | None
    seq: int = -1  # arrival order among QoS 1 messages, for the PUBACK


class _InOrderAcks:
    """Sends PUBACKs in the order the messages arrived, whichever writer commits first.

    MQTT requires a client to acknowledge QoS 1 messages in the order it received them; with
    several writers a later message can be committed first, so its PUBACK waits here.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._arrived = 0  # numbers handed out (network thread only)
        self._next = 0  # the oldest message not yet acknowledged
        self._done: dict[int, int] = {}  # seq -> MQTT packet id, committed but waiting for older ones

    def number(self) -> int:
        n = self._arrived
        self._arrived += 1
        return n

    def done(self, client: Any, items: Sequence[_Item]) -> None:
        with self._lock:
            for item in items:
                if item.seq >= 0:
                    self._done[item.seq] = item.mid
            while self._next in self._done:
                mid = self._done.pop(self._next)
                if client is not None:
                    client.ack(mid, 1)
                self._next += 1


class CloudService:
    """Consumes bus messages into a :class:`CloudLedger`; see the module docstring.

    ``ledger`` is used only by the thread that calls :meth:`run` (the first writer), each of
    ``writer_ledgers`` (more connections to the same database) by one more writer thread.
    """

    def __init__(
        self,
        ledger: CloudLedger,
        key: Ed25519PrivateKey,
        mqtt: MqttConfig,
        *,
        client_id: str = CLOUD,
        window_ms: int = protocol.DEFAULT_WINDOW_MS,
        max_batch_messages: int = 40,
        settle_interval_s: float = 2.0,
        ack_after_commit: bool = True,
        settle_ledger: CloudLedger | None = None,
        writer_ledgers: Sequence[CloudLedger] = (),
    ) -> None:
        self.ledger = ledger
        self.key = key
        self.mqtt = mqtt
        self.client_id = client_id
        self.window_ms = window_ms
        self.max_batch = max_batch_messages
        self.settle_interval_s = settle_interval_s
        self.ack_after_commit = ack_after_commit
        self.settle_ledger = settle_ledger
        #: One connection per writer thread: ``ledger`` for the first, then ``writer_ledgers``.
        self.writer_ledgers = [ledger, *writer_ledgers]
        self.guard = ReplayGuard(window_ms)
        self.counts: Counter[str] = Counter()  # rejections by reason, this run
        self.applied_fares = 0
        self.batches = 0  # database transactions of fares messages
        self.db_seconds = 0.0  # time spent applying them
        self.connected = threading.Event()
        self._stats_lock = threading.Lock()
        self._inboxes: list[queue.Queue[_Item]] = [queue.Queue() for _ in self.writer_ledgers]
        self._acks = _InOrderAcks()
        self._writer_of: dict[str, int] = {}  # bus -> writer (network thread only)
        self._writer_failure: BaseException | None = None
        self._handlers: dict[str, list[Handler]] = defaultdict(list)
        self._keys: dict[str, Ed25519PublicKey] = {}
        self._keys_loaded = 0.0
        self._want_keys = threading.Event()
        self._last_batch_at = 0.0
        self.last_settled_at: float | None = None  # time.time() of the last completed settlement
        self._client: Any = None
        #: Per bus, its clock minus the cloud's in ms, from its newest live heartbeat.
        self.clock_skew_ms: dict[str, int] = {}
        self._skew_warned: set[str] = set()

    # -- wiring ----------------------------------------------------------------------------

    def on(self, msg_type: str, handler: Handler) -> None:
        """Call ``handler(envelope)`` for every verified message of ``msg_type`` (in the worker thread).

        Types: ``heartbeat``, ``offline``, ``decision``, ``gallery_ack`` (``fares`` are the ledger's).
        A handler that raises is logged and does not stop the service.
        """
        if msg_type not in protocol.SCHEMAS or protocol.SCHEMAS[msg_type][1] != "bus" or msg_type == "fares":
            raise ValueError(f"no handlers for {msg_type!r}; choose heartbeat, offline, decision or gallery_ack")
        self._handlers[msg_type].append(handler)

    def _lookup_key(self, sender: str) -> Ed25519PublicKey | None:
        key = self._keys.get(sender)
        if key is None:
            self._want_keys.set()  # the worker reloads the registry: a bus registered meanwhile
        return key

    def reload_keys(self) -> None:
        """Read the bus registry again (the worker does this within seconds of an unknown sender)."""
        self._want_keys.clear()
        keys = {}
        for bus, text in self.ledger.bus_keys().items():
            try:
                keys[bus] = protocol.public_key_from_text(text)
            except ValueError:
                log.error("bus %s has an unreadable public key in the registry; its messages are refused", bus)
        self._keys = keys  # replaced whole: the network thread reads it
        self._keys_loaded = time.monotonic()

    @property
    def client(self) -> Any:
        """The service's paho client once started, to publish cloud-to-bus messages (gallery deltas).

        Receive through :meth:`on`, not with topic callbacks on this client: it acknowledges
        messages to the broker itself, after the commit, and a message it never sees stays unacknowledged.
        """
        return self._client

    # -- MQTT callbacks (network thread) ----------------------------------------------------

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.error("broker refused the cloud's connection: %s", reason)
            return
        # Retained statuses only for a new subscription, not again on every reconnection.
        opts = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
        client.subscribe([(t, opts) for t in SUBSCRIPTIONS])
        self.connected.set()
        log.info("cloud connected to %s:%d (session present: %s)", self.mqtt.host, self.mqtt.port,
                 flags.session_present)  # fmt: skip

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connected.clear()
        log.warning("cloud disconnected from the broker (%s); paho reconnects", reason)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        # Checking here lets verification run while the worker waits on the database.
        env, refusal = None, None
        try:
            env = self._check(msg.topic, bytes(msg.payload), bool(msg.retain))
        except ProtocolError as exc:
            refusal = exc
        item = _Item(msg.topic, msg.mid, msg.qos, bool(msg.retain), env, refusal)
        if item.qos > 0 and self.ack_after_commit:
            item.seq = self._acks.number()
        self._inboxes[self._writer_for(item)].put(item)

    def _writer_for(self, item: _Item) -> int:
        """A bus's fares always go to the same writer (buses dealt out in turn as they first
        appear); every other message goes to the first."""
        if item.env is None or not isinstance(item.env.body, Fares):
            return 0
        bus = item.env.sender
        if bus not in self._writer_of:
            self._writer_of[bus] = len(self._writer_of) % len(self._inboxes)
        return self._writer_of[bus]

    # -- running ---------------------------------------------------------------------------

    def start(self) -> None:
        """Connect (asynchronously) and start the MQTT network thread."""
        self.reload_keys()
        client = make_client(self.mqtt, self.client_id, clean_start=False)
        client.manual_ack_set(self.ack_after_commit)  # PUBACK only after the database commit
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = lambda c, u: log.warning("cloud cannot reach the broker at %s:%d; paho retries",
                                                          self.mqtt.host, self.mqtt.port)  # fmt: skip
        client.on_message = self._on_message
        client.connect_async()
        client.loop_start()
        self._client = client

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set: apply batches and acknowledge them; settle.

        This thread is the first writer; each of ``writer_ledgers`` gets a writer thread. With a
        ``settle_ledger`` (one more connection) settlement runs in its own thread, so ingestion
        never waits for it; otherwise it runs between batches in this thread. Raises if a writer
        thread failed (after stopping the others), so the process exits with an error.
        """
        if self._client is None:
            self.start()
        threads = [
            threading.Thread(target=self._write_loop, args=(i, stop), name=f"writer-{i}", daemon=True)
            for i in range(1, len(self.writer_ledgers))
        ]
        if self.settle_ledger is not None:
            threads.append(threading.Thread(target=self._settle_loop, args=(self.settle_ledger, stop), name="settle",
                                            daemon=True))  # fmt: skip
        for t in threads:
            t.start()
        last_settle = 0.0
        try:
            while not stop.is_set():
                if self._want_keys.is_set() and time.monotonic() - self._keys_loaded > 2:
                    try:
                        self.reload_keys()
                    except Exception:
                        self._keys_loaded = time.monotonic()  # try again in a few seconds
                        log.exception("cannot read the bus registry; keeping the keys already known")
                items = self._take_batch(0, 0.2)
                if items:
                    self._process(items, self.ledger, stop)
                now = time.monotonic()
                waited = now - last_settle
                due = waited >= self.settle_interval_s and (not self._busy() or waited >= SETTLE_MAX_DELAY_S)
                if self.settle_ledger is None and due:
                    self._settle(self.ledger, max_rounds=1)  # bounded: ingestion waits one round at most
                    last_settle = now
        finally:
            stop.set()
            for t in threads:
                t.join(30)
            self.close()
        if self._writer_failure is not None:
            raise RuntimeError("a writer thread of the cloud service failed") from self._writer_failure

    def _write_loop(self, i: int, stop: threading.Event) -> None:
        """Writer ``i`` (from 1): apply the batches queued for it, on its own connection."""
        try:
            while not stop.is_set():
                items = self._take_batch(i, 0.2)
                if items:
                    self._process(items, self.writer_ledgers[i], stop)
        except BaseException as exc:
            log.exception("writer %d failed; stopping the service (its messages stay at the broker)", i)
            self._writer_failure = exc
            stop.set()  # run() then raises it, as when the first writer fails

    def _settle_loop(self, ledger: CloudLedger, stop: threading.Event) -> None:
        last = time.monotonic()
        while not stop.wait(self.settle_interval_s):
            if self._busy() and time.monotonic() - last < SETTLE_MAX_DELAY_S:
                continue  # ingestion first: its acks empty the buses' outboxes; refunds can wait a little
            self._settle(ledger, max_rounds=5)
            last = time.monotonic()

    def _busy(self) -> bool:
        """Whether fares messages were applied in the last second (a backlog is being drained)."""
        return time.monotonic() - self._last_batch_at < 1.0

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()
            log.info("cloud service stopped (applied %d new fares, refused %s)", self.applied_fares,
                     dict(self.counts) or "nothing")  # fmt: skip

    def _take_batch(self, writer: int, timeout_s: float) -> list[_Item]:
        inbox = self._inboxes[writer]
        try:
            items = [inbox.get(timeout=timeout_s)]
        except queue.Empty:
            return []
        while len(items) < self.max_batch:
            try:
                items.append(inbox.get_nowait())
            except queue.Empty:
                break
        return items

    def _settle(self, ledger: CloudLedger, max_rounds: int) -> None:
        try:
            ledger.settle(max_rounds=max_rounds)
            self.last_settled_at = time.time()  # the settlement lag metric (facefare.metrics)
        except Exception:
            log.exception("settlement failed; it is retried at the next interval")

    # -- one batch -------------------------------------------------------------------------

    def _check(self, topic: str, payload: bytes, retain: bool) -> Envelope:
        """parse() plus freshness and replay checks; raises ProtocolError.

        Freshness refuses only door decisions. Fares are idempotent by fare id (and their message
        ids are kept by the ledger), gallery acks by version, statuses carry no money: a bus whose
        clock is far off must still sync, so for those the age is measured (the bus's clock
        skew, :attr:`clock_skew_ms`) instead of refused.
        """
        env = protocol.parse(topic, payload, self._lookup_key, check_time=False)
        # A last will is signed at connect and sent by the broker much later; a retained status
        # arrives again on every subscription. Neither carries money, so only their signature counts.
        status_redelivery = env.type == "offline" or (env.type == "heartbeat" and retain)
        if not status_redelivery:
            age = protocol.now_ms() - env.sent_ms
            if env.type == "heartbeat":
                self.clock_skew_ms[env.sender] = -age  # the bus's clock minus the cloud's (plus transit)
            if abs(age) > self.window_ms:
                if env.type == "decision":
                    raise ProtocolError("stale", f"sent {age // 1000} s from now, window {self.window_ms // 1000} s")
                if env.sender not in self._skew_warned:
                    self._skew_warned.add(env.sender)
                    log.warning("bus %s: its clock is %d s off the cloud's; its %s is accepted (idempotent)",
                                env.sender, -age // 1000, env.type)  # fmt: skip
            elif env.sender in self._skew_warned:
                self._skew_warned.discard(env.sender)
            self.guard.check(env)
        return env

    def _process(self, items: list[_Item], ledger: CloudLedger, stop: threading.Event) -> None:
        fares: list[FaresMessage] = []
        rejections: list[Rejection] = []
        others: list[tuple[Envelope, bool]] = []
        for item in items:
            env, exc = item.env, item.refusal
            if env is None:
                assert exc is not None
                bus = bus_of_topic(item.topic) or "?"
                rejections.append(Rejection(bus, exc.reason, exc.detail[:500]))
                with self._stats_lock:
                    self.counts[exc.reason] += 1
                log.warning("refused a message on %s: %s", item.topic[:120], exc)
                continue
            if isinstance(env.body, Fares):
                fares.append(FaresMessage(env.sender, env.msg_id, env.sent_ms, env.body.fares))
            else:
                others.append((env, item.retain))
        results = self._apply(ledger, fares, rejections, stop)
        if results is None:
            return  # stopping with the database unreachable: the broker keeps the messages
        self._flag_times(ledger, fares)
        for res in results:
            with self._stats_lock:
                self.applied_fares += res.new
                if res.duplicates:
                    self.counts["replay"] += res.duplicates
                if res.replayed_message:
                    self.counts["replay"] += 1
                for _fare_id, reason in res.rejected:
                    self.counts[reason] += 1
            self._send_ack(res)
        for env, retained in others:
            self._dispatch(env, ledger, retained)
        self._acks.done(self._client, items)

    def _apply(self, ledger: CloudLedger, fares: list[FaresMessage], rejections: list[Rejection],
               stop: threading.Event) -> list[IngestResult] | None:  # fmt: skip
        """Apply the batch; retry only what retrying can fix (the database unreachable or locked).

        A fare the ledger cannot store (an error that would come back on every retry) must not
        hold up the batch, its bus or any other bus: the batch is applied again message by
        message and fare by fare, and only the fares that fail are refused as ``unstorable``
        (recorded, counted, logged as an error, and sent back to the bus as rejected for good).
        """
        delay = 0.5
        while True:
            try:
                start = time.perf_counter()
                results = self._ingest_isolating(ledger, fares, rejections)
                with self._stats_lock:
                    self.db_seconds += time.perf_counter() - start
                    self.batches += 1
                if fares:
                    self._last_batch_at = time.monotonic()
                return results
            except Exception:
                log.exception("cannot write to the cloud ledger; retrying in %.1f s", delay)
                if stop.wait(delay):
                    return None
                delay = min(delay * 2, 30.0)

    def _ingest_isolating(self, ledger: CloudLedger, fares: list[FaresMessage],
                          rejections: list[Rejection]) -> list[IngestResult]:  # fmt: skip
        try:
            return ledger.ingest(fares, rejections)
        except Exception as exc:
            if ledger.is_transient(exc):
                raise
            log.error("the cloud ledger refused a batch of %d messages (%s); applying them one by one",
                      len(fares), exc)  # fmt: skip
        ledger.ingest([], rejections)
        results = []
        for msg in fares:
            try:
                results.extend(ledger.ingest([msg]))
                continue
            except Exception as exc:
                if ledger.is_transient(exc):
                    raise
            res = IngestResult(msg.sender)
            for i, fare in enumerate(msg.fares):
                # Each fare alone, as a part of the message (its own message id, so the whole
                # message delivered again later still counts as new and its fares as duplicates).
                part = FaresMessage(msg.sender, f"{msg.msg_id}.{i}", msg.sent_ms, [fare])
                try:
                    (one,) = ledger.ingest([part])
                except Exception as exc:
                    if ledger.is_transient(exc):
                        raise
                    detail = f"fare {fare.fare_id} of message {msg.msg_id} cannot be stored: {exc}"[:500]
                    log.error("UNSTORABLE fare from bus %s refused for good: %s", msg.sender, detail)
                    ledger.record_rejections([Rejection(msg.sender, "unstorable", detail)])
                    one = IngestResult(msg.sender, rejected=[(fare.fare_id, "unstorable")])
                res.acked += one.acked
                res.new += one.new
                res.duplicates += one.duplicates
                res.rejected += one.rejected
            results.append(res)
        return results

    def _flag_times(self, ledger: CloudLedger, messages: list[FaresMessage]) -> None:
        """Flag (not refuse: the money happened) fares whose times cannot be right: boarded after
        the message carrying them was sent, or in the cloud's future. Counted as ``implausible_time``."""
        now = protocol.now_ms()
        flags = [
            Rejection(m.sender, "implausible_time", f"fare {f.fare_id} boarded_ms {f.boarded_ms}: "
                      f"{(f.boarded_ms - min(m.sent_ms, now)) // 1000} s after its message was sent or now")
            for m in messages for f in m.fares
            if f.boarded_ms > min(m.sent_ms, now) + IMPLAUSIBLE_AHEAD_MS
        ]  # fmt: skip
        if flags:
            log.error("bus %s: %d fare(s) with implausible times (a bus clock stepped?)", flags[0].bus_id, len(flags))
            with self._stats_lock:
                self.counts["implausible_time"] += len(flags)
            try:
                ledger.record_rejections(flags)
            except Exception:
                log.exception("cannot record implausible fare times")

    def _send_ack(self, res: IngestResult) -> None:
        rejected = [Rejected(fare_id=f, reason=r) for f, r in res.rejected]
        if (not res.acked and not rejected) or self._client is None:
            return
        size = MAX_FARES_PER_MESSAGE
        for start in range(0, max(len(res.acked), len(rejected)), size):
            body = Ack(fare_ids=res.acked[start : start + size], rejected=rejected[start : start + size])
            payload = protocol.encode(Envelope.make("ack", CLOUD, body), self.key)
            self._client.publish(topic_for("ack", res.sender), payload, qos=1)

    def _dispatch(self, env: Envelope, ledger: CloudLedger, retained: bool = False) -> None:
        if env.type in ("heartbeat", "offline"):
            backlog = getattr(env.body, "outbox_backlog", 0)
            body = env.body.model_dump()
            if env.sender in self.clock_skew_ms:
                body["cloud_measured_skew_ms"] = self.clock_skew_ms[env.sender]
            try:
                ledger.record_status(env.sender, env.type == "heartbeat", backlog, body)
            except Exception:
                log.exception("cannot record the status of bus %s", env.sender)
            if env.type == "offline":
                log.warning("bus %s is offline (%s)", env.sender, "its retained status" if retained else "last will")
        for handler in self._handlers.get(env.type, ()):
            try:
                handler(env)
            except Exception:
                log.exception("%s handler %r failed on a message from %s", env.type, handler, env.sender)
