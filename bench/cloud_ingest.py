"""Cloud ingest: fares per second from the MQTT broker into PostgreSQL, the service against a naive consumer.

Starts a real Mosquitto (TLS, ACL) and a real PostgreSQL with the project's own code, signs
``--fares`` fares of three buses into ``fares`` messages of 200, and queues them at the broker for
the consumer's persistent session while it is away. Then, timed from the moment the consumer
connects until the last fare is committed:

* **service**: :class:`cloud_sync.cloud.service.CloudService` as ``facefare cloud run`` runs it: every
  message verified (schema, signature, freshness, replay), fares deduplicated and written with
  COPY in one transaction per batch of messages, a signed ack per message after the commit;
* **naive**: the same verification, then one ``INSERT`` per fare and per charge entry, each in
  its own transaction (autocommit), the way a first consumer is usually written. It gets
  ``--naive-fares`` fares (fewer: it is slow).

The service runs as ``facefare cloud run`` does, with settlement across buses in its own thread
on a second connection every ``--settle-interval`` seconds (deferred, at most 30 s, while fares
keep arriving); the settlement still to do when the last fare is in is timed separately. Prints
fares/s for both and their ratio::

    .venv/bin/python bench/cloud_ingest.py                  # 100,000 fares; naive 10,000
    .venv/bin/python bench/cloud_ingest.py --quick          # 10,000 and 2,000, a smoke test
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cloud_sync import protocol  # noqa: E402
from cloud_sync.cloud.ledger import ENTRY_COLUMNS, STORED_FARE_COLUMNS, open_ledger  # noqa: E402
from cloud_sync.cloud.service import SUBSCRIPTIONS, CloudConfig, CloudService  # noqa: E402
from cloud_sync.devservers.mosquitto_server import MosquittoServer  # noqa: E402
from cloud_sync.devservers.postgres_server import PostgresServer  # noqa: E402
from cloud_sync.mqtt import MqttConfig, connect, make_client, wait_connected  # noqa: E402
from cloud_sync.protocol import Envelope, Fare, Fares, topic_for  # noqa: E402
from edge.fares.record import epoch_ms  # noqa: E402

BUSES = ("bus-1", "bus-2", "bus-3")
T0 = datetime(2025, 3, 3, 5, 0, tzinfo=UTC)


def make_fares(n: int, seed: int) -> list[Fare]:
    """``n`` plausible fares: three buses, a rider pool of n/10, a few boardings a day each."""
    rng = random.Random(seed)
    out = []
    at = {b: T0 for b in BUSES}
    for i in range(n):
        bus = BUSES[i % 3]
        at[bus] += timedelta(seconds=rng.randint(5, 40))
        when = at[bus]
        amount = rng.choice([250, 250, 250, 125, 0, 400])
        out.append(Fare.model_construct(
            fare_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)), bus_id=bus, trip_id=f"{bus}-{when:%d%H}",
            route_id="12", rider_id=f"rider-{rng.randrange(max(1, n // 10))}", concession="adult",
            boarded_at=when.isoformat(), boarded_ms=epoch_ms(when), service_day=when.date().isoformat(),
            amount_minor=amount, base_minor=max(amount, 250), currency="EUR", reason="paid", rules_digest="bench",
            recorded_at=when.isoformat(),
        ))  # fmt: skip
    return out


def sign_messages(fares: list[Fare], keys: dict[str, Any]) -> list[tuple[str, bytes]]:
    by_bus: dict[str, list[Fare]] = {b: [] for b in BUSES}
    for f in fares:
        by_bus[f.bus_id].append(f)
    out = []
    for bus, mine in by_bus.items():
        for start in range(0, len(mine), protocol.MAX_FARES_PER_MESSAGE):
            env = Envelope.make("fares", bus, Fares(fares=mine[start : start + protocol.MAX_FARES_PER_MESSAGE]))
            out.append((topic_for("fares", bus), protocol.encode(env, keys[bus])))
    return out


def queue_for(broker: MosquittoServer, client_id: str, messages: list[tuple[str, bytes]]) -> None:
    """Make ``client_id``'s persistent session (subscribed), leave, then publish everything for it."""
    cloud_cfg = broker.config_for("cloud")
    sub = connect(cloud_cfg, client_id)
    done = threading.Event()
    sub.on_subscribe = lambda *a: done.set()
    sub.subscribe([(t, 1) for t in SUBSCRIPTIONS])
    done.wait(10)
    sub.disconnect()
    sub.loop_stop()
    pubs = {b: connect(broker.config_for(b), f"{b}-bench", clean_start=True) for b in BUSES}
    infos = []
    for topic, payload in tqdm(messages, desc=f"queue for {client_id}", unit="msg", leave=False):
        infos.append(pubs[protocol.bus_of_topic(topic) or ""].publish(topic, payload, qos=1))
    for info in infos:
        info.wait_for_publish(60)
    for client in pubs.values():
        client.disconnect()
        client.loop_stop()


def wait_progress(count: Callable[[], int], total: int, desc: str, timeout_s: float) -> float:
    """Seconds until ``count()`` reaches ``total`` (tqdm shows the progress)."""
    start = time.perf_counter()
    with tqdm(total=total, desc=desc, unit="fare") as bar:
        seen = 0
        while seen < total:
            if time.perf_counter() - start > timeout_s:
                raise TimeoutError(f"{desc}: only {seen} of {total} fares after {timeout_s} s")
            time.sleep(0.05)
            now = count()
            bar.update(now - seen)
            seen = now
    return time.perf_counter() - start


def run_service(broker: MosquittoServer, dsn: str, keys: dict[str, Any], messages: list[tuple[str, bytes]],
                total: int, settle_s: int, writers: int) -> tuple[float, float]:  # fmt: skip
    ledger = open_ledger(dsn)
    for bus, key in keys.items():
        ledger.register_bus(bus, protocol.public_key_text(key.public_key()))
    queue_for(broker, "cloud-bench", messages)
    # As 'facefare cloud run' runs it: writer threads on their own connections, settlement in its
    # own thread on one more.
    service = CloudService(ledger, protocol.generate_key(), broker.config_for("cloud"), client_id="cloud-bench",
                           settle_ledger=open_ledger(dsn), settle_interval_s=settle_s,
                           writer_ledgers=[open_ledger(dsn) for _ in range(writers - 1)])  # fmt: skip
    stop = threading.Event()
    thread = threading.Thread(target=service.run, args=(stop,), daemon=True)
    thread.start()
    seconds = wait_progress(lambda: service.applied_fares, total, "service", 600)
    print(f"service: {service.batches} transactions, {service.db_seconds:.2f} s in the database", file=sys.stderr)
    stop.set()
    thread.join(30)
    with open_ledger(dsn) as check:
        assert check.fare_count() == total, check.fare_count()
        start = time.perf_counter()
        check.settle()  # what the settlement thread had not done yet
        rest_s = time.perf_counter() - start
    return seconds, rest_s


class NaiveConsumer:
    """Verify like the service, then INSERT each fare and its entry in its own transaction."""

    def __init__(self, cfg: MqttConfig, dsn: str, keys: dict[str, Any]) -> None:
        import psycopg

        self.conn = psycopg.connect(dsn, autocommit=True)
        self.lookup = {b: k.public_key() for b, k in keys.items()}.get
        self.done = 0
        self.cfg = cfg
        cols = ", ".join(STORED_FARE_COLUMNS)
        self.fare_sql = (f"INSERT INTO fares ({cols}) VALUES ({', '.join(['%s'] * len(STORED_FARE_COLUMNS))}) "
                         "ON CONFLICT (fare_id) DO NOTHING")  # fmt: skip
        self.entry_sql = f"INSERT INTO entries ({', '.join(ENTRY_COLUMNS)}) VALUES ({', '.join(['%s'] * 10)})"

    def on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        env = protocol.parse(msg.topic, msg.payload, self.lookup)
        at = datetime.now(UTC).isoformat()
        for f in env.body.fares:
            row = f.model_dump()
            week = f.day() - timedelta(days=f.day().weekday())
            self.conn.execute(self.fare_sql, [row[c] for c in STORED_FARE_COLUMNS[:-3]]
                              + [week.isoformat(), env.msg_id, at])  # fmt: skip
            self.conn.execute(self.entry_sql, [f.fare_id, "charge", f.amount_minor, f.currency, f.rider_id, f.bus_id,
                                               f.service_day, week.isoformat(), f.reason, at])  # fmt: skip
            self.done += 1


def run_naive(broker: MosquittoServer, dsn: str, keys: dict[str, Any], messages: list[tuple[str, bytes]],
              total: int) -> float:  # fmt: skip
    open_ledger(dsn).close()  # the same schema, triggers and indexes
    queue_for(broker, "naive-bench", messages)
    consumer = NaiveConsumer(broker.config_for("cloud"), dsn, keys)
    client = make_client(broker.config_for("cloud"), "naive-bench")  # paho acks after on_message returns
    client.on_message = consumer.on_message  # before connecting: the queued messages come at once
    wait_connected(client)
    try:
        return wait_progress(lambda: consumer.done, total, "naive", 900)
    finally:
        client.disconnect()
        client.loop_stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fares", type=int, default=100_000, help="fares through the service (default 100,000)")
    ap.add_argument("--naive-fares", type=int, default=10_000, help="fares through the naive consumer")
    ap.add_argument("--quick", action="store_true", help="10,000 and 2,000 fares")
    ap.add_argument("--settle-interval", type=int, default=2,
                    help="seconds between settlement rounds during ingest (the service's default: 2)")
    ap.add_argument("--writers", type=int, default=CloudConfig().writers,
                    help=f"writer threads of the service (default {CloudConfig().writers}, as facefare cloud run)")
    ap.add_argument("--dir", type=Path, help="work directory (default: a temporary one, removed after)")
    args = ap.parse_args()
    if args.quick:
        args.fares, args.naive_fares = 10_000, 2_000
    work = Path(args.dir or tempfile.mkdtemp(prefix="facefare-bench-"))
    keys = {b: protocol.generate_key() for b in BUSES}
    print(f"signing {args.fares:,} + {args.naive_fares:,} fares into messages of {protocol.MAX_FARES_PER_MESSAGE}",
          file=sys.stderr)  # fmt: skip
    service_msgs = sign_messages(make_fares(args.fares, 1), keys)
    naive_msgs = sign_messages(make_fares(args.naive_fares, 2), keys)
    pg_dir = Path(tempfile.mkdtemp(prefix="facefare-bench-pg-"))  # reachable by the postgres user when root
    pg = PostgresServer(pg_dir)
    try:
        with MosquittoServer(work / "mqtt", BUSES) as broker:
            pg.start()
            service_s, settle_s = run_service(broker, pg.create_database("bench_service"), keys, service_msgs,
                                              args.fares, args.settle_interval, args.writers)  # fmt: skip
            naive_s = run_naive(broker, pg.create_database("bench_naive"), keys, naive_msgs, args.naive_fares)
    finally:
        pg.stop()
        shutil.rmtree(pg_dir, ignore_errors=True)
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    service_rate, naive_rate = args.fares / service_s, args.naive_fares / naive_s
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"service: {args.fares:,} fares in {service_s:.2f} s = {service_rate:,.0f} fares/s, {args.writers} writers "
          f"(target 20,000/s: {'met' if service_rate >= 20_000 else 'NOT met'})")  # fmt: skip
    print(f"naive:   {args.naive_fares:,} fares in {naive_s:.2f} s = {naive_rate:,.0f} fares/s")
    print(f"ratio:   {service_rate / naive_rate:.1f}x")
    print(f"settlement left to do after the last fare was in: {settle_s:.2f} s (settlement thread every "
          f"{args.settle_interval} s, deferred while fares keep arriving, at most 30 s)")  # fmt: skip


if __name__ == "__main__":
    main()
