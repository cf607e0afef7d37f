"""End to end: three buses, a real MosquittoServer, a real PostgreSQL, the cloud service as a real process.

Three buses charge 10,000 fares in total into their own SQLite ledgers while their
:class:`BusSync` drains the outboxes over TLS. Meanwhile the broker is restarted twice and the
``facefare cloud run`` process is killed with SIGKILL once (and started again). Afterwards the
cloud holds exactly the buses' fares: the same count and sum per bus and service day, each fare
once with one charge entry, every outbox empty, settlement done, and ``facefare cloud
reconcile`` finds no difference with the buses' exports.

Two smaller tests check the hooks other features use (heartbeat fields, gallery routing both
ways) and a bus back after days away (an ack that waited days at the broker is still taken).
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from cloud_sync import protocol
from cloud_sync.bus_sync import BusSync
from cloud_sync.cloud.ledger import open_ledger
from cloud_sync.cloud.service import CloudService
from cloud_sync.devservers.mosquitto_server import MosquittoServer
from cloud_sync.mqtt import connect
from cloud_sync.protocol import Ack, Envelope, GalleryAck, GalleryDelta
from edge.fares.ledger import Ledger
from edge.fares.rules import FaresConfig, Outcome
from facefare.cli import main

TOTAL = 10_000
BUSES = ("bus-1", "bus-2", "bus-3")
T0 = datetime(2025, 3, 3, 5, 0, tzinfo=UTC)
RULES = FaresConfig(routes={"12": 250, "X1": 400}, offline_credit_limit_minor=10**8, timezone="UTC")


def _toml(value: Any) -> str:
    return json.dumps(str(value)) if isinstance(value, str | Path) else json.dumps(value)


def write_cloud_config(path: Path, dsn: str, key_file: Path, broker: MosquittoServer) -> None:
    mqtt = broker.config_for("cloud").model_dump(exclude_none=True)
    mqtt["reconnect_max_s"] = 2
    lines = [f"data_dir = {_toml(path.parent)}", 'log_level = "INFO"', "[fares]",
             f"offline_credit_limit_minor = {RULES.offline_credit_limit_minor}", 'timezone = "UTC"',
             "[fares.routes]", '"12" = 250', '"X1" = 400',
             "[cloud]", f"database_url = {_toml(dsn)}", f"key_file = {_toml(key_file)}", "settle_interval_s = 1",
             "[mqtt]"] + [f"{k} = {_toml(v)}" for k, v in mqtt.items()]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")


class CloudProcess:
    def __init__(self, config: Path, log: Path) -> None:
        self.cmd = [sys.executable, "-m", "facefare.cli", "--config", str(config), "cloud", "run"]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=out, stdin=subprocess.DEVNULL)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(20)


class Bus(threading.Thread):
    """One bus: charges its share of fares into its ledger and syncs, in one thread."""

    def __init__(self, bus_id: str, n: int, workdir: Path, broker: MosquittoServer, cloud_key: Any, key: Any,
                 stop: threading.Event) -> None:  # fmt: skip
        super().__init__(name=bus_id, daemon=True)
        self.bus_id, self.n, self.stop = bus_id, n, stop
        self.path = workdir / f"{bus_id}.db"
        mqtt = broker.config_for(bus_id).model_copy(update={"reconnect_max_s": 2})
        self.args = (key, cloud_key, mqtt)
        self.charged = 0
        self.error: BaseException | None = None
        self.sync: BusSync | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the test
            self.error = exc
            raise

    def _run(self) -> None:
        rng = random.Random(self.bus_id)
        ledger = Ledger(self.path, RULES, bus_id=self.bus_id)
        key, cloud_key, mqtt = self.args
        self.sync = sync = BusSync(self.bus_id, ledger, key, cloud_key, mqtt, ack_timeout_s=5,
                                   heartbeat_interval_s=1, max_inflight_batches=8)  # fmt: skip
        sync.start()
        at = T0 + timedelta(seconds=BUSES.index(self.bus_id) * 13)
        while not self.stop.is_set():
            for _ in range(min(25, self.n - self.charged)):
                while True:
                    at += timedelta(seconds=rng.randint(20, 60))
                    rider, route = f"rider-{rng.randrange(300)}", rng.choice(["12", "X1"])
                    kind = rng.choice(["adult"] * 6 + ["child", "senior", "free"])
                    d = ledger.charge(rider, route, at, trip_id=f"{self.bus_id}-{at:%d%H}", concession=kind)
                    if d.outcome is Outcome.CHARGED and not d.replayed:
                        self.charged += 1
                        break
            sync.step()
            self.stop.wait(0.03)
        sync.close()
        ledger.close()


def _wait(cond: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_ten_thousand_fares_reach_the_cloud_exactly_once(
    mosquitto: MosquittoServer, postgres_dsn: str, tmp_path: Path
) -> None:
    cloud_key_file = tmp_path / "cloud_key.pem"
    cloud_key = protocol.generate_key()
    protocol.save_private_key(cloud_key, cloud_key_file)
    bus_keys = {b: protocol.generate_key() for b in BUSES}
    reader = open_ledger(postgres_dsn, RULES)
    for bus, key in bus_keys.items():
        reader.register_bus(bus, protocol.public_key_text(key.public_key()))
    config = tmp_path / "cloud.toml"
    write_cloud_config(config, postgres_dsn, cloud_key_file, mosquitto)
    cloud = CloudProcess(config, tmp_path / "cloud.log")
    cloud.start()

    stop = threading.Event()
    shares = [TOTAL // 3 + (1 if i < TOTAL % 3 else 0) for i in range(3)]
    buses = [Bus(b, n, tmp_path, mosquitto, cloud_key.public_key(), bus_keys[b], stop)
             for b, n in zip(BUSES, shares, strict=True)]  # fmt: skip
    for bus in buses:
        bus.start()

    def charged() -> int:
        assert all(b.error is None for b in buses), [b.error for b in buses]
        return sum(b.charged for b in buses)

    try:
        _wait(lambda: charged() >= 2000, 60, "2,000 charges")
        mosquitto.restart()
        _wait(lambda: charged() >= 5000, 60, "5,000 charges")
        cloud.kill()
        time.sleep(1.0)
        cloud.start()
        _wait(lambda: charged() >= 7500, 60, "7,500 charges")
        mosquitto.restart()
        _wait(lambda: charged() == TOTAL, 60, "every charge")

        def outboxes_empty() -> bool:
            charged()
            return all(Ledger(b.path, RULES, bus_id=b.bus_id, readonly=True).stats()["outbox"] == 0 for b in buses)

        _wait(outboxes_empty, 90, f"empty outboxes (cloud has {reader.fare_count()} fares)")
        _wait(lambda: reader.unsettled() == 0, 30, "settlement of every fare")
    finally:
        stop.set()
        for bus in buses:
            bus.join(15)
        code = cloud.terminate()
    assert code == 0, (tmp_path / "cloud.log").read_text()[-3000:]

    # Every fare exactly once, with one charge entry each; the same counts and sums per bus and day.
    assert reader.fare_count() == TOTAL
    entries = reader.entries()
    charges = [e for e in entries if e["kind"] == "charge"]
    assert len(charges) == len({e["fare_id"] for e in charges}) == TOTAL
    for bus in buses:
        with Ledger(bus.path, RULES, bus_id=bus.bus_id, readonly=True) as led:
            assert led.stats()["outbox"] == 0
            on_bus = {(t.key, t.currency): (t.boardings, t.charged_minor) for t in led.totals("day")}
        in_cloud = {(t.service_day, t.currency): (t.fares, t.charged_minor) for t in reader.day_totals(bus.bus_id)}
        assert in_cloud == on_bus
    # Settlement gave back what one bus could not know, never more than was charged.
    refunds = [e for e in entries if e["kind"] == "refund"]
    assert refunds and -sum(e["amount_minor"] for e in refunds) < sum(e["amount_minor"] for e in charges)
    assert set(reader.rejection_counts()) <= {"replay"}  # only the repeats the chaos caused

    # The operator's view: reconcile against the buses' own exports.
    runner = CliRunner()
    exports = []
    for bus in buses:
        out = tmp_path / f"{bus.bus_id}.json"
        result = runner.invoke(main, ["ledger", "export", "--db", str(bus.path), "--format", "json", "--fares",
                                      "--out", str(out)])  # fmt: skip
        assert result.exit_code == 0, result.output
        exports.append(str(out))
    result = runner.invoke(main, ["cloud", "reconcile", "--db", postgres_dsn, *exports])
    assert result.exit_code == 0 and "no differences" in result.output, result.output
    reader.close()


def test_hooks_heartbeat_fields_gallery_routing_and_gallery_acks(mosquitto: MosquittoServer, tmp_path: Path) -> None:
    """BusSync merges status_fields() into its retained heartbeat and routes verified ``gallery``
    messages to its handler; the cloud routes ``gallery_ack`` to its handler and keeps each bus's status."""
    cloud_key, bus_key = protocol.generate_key(), protocol.generate_key()
    url = f"sqlite:///{tmp_path / 'cloud.db'}"
    led = open_ledger(url, RULES)
    led.register_bus("bus-1", protocol.public_key_text(bus_key.public_key()))
    service = CloudService(led, cloud_key, mosquitto.config_for("cloud"), settle_ledger=open_ledger(url, RULES))
    acks: list[Envelope] = []
    service.on("gallery_ack", acks.append)
    stop = threading.Event()
    cloud = threading.Thread(target=service.run, args=(stop,), daemon=True)
    cloud.start()
    assert service.connected.wait(10)

    ledger = Ledger(tmp_path / "bus-1.db", RULES, bus_id="bus-1")
    ledger.charge("rider-1", "12", T0, trip_id="t1")
    fields = {"gallery_version": 7, "pending_erasures": 2}
    configured: list[Any] = []
    sync = BusSync("bus-1", ledger, bus_key, cloud_key.public_key(), mosquitto.config_for("bus-1"),
                   heartbeat_interval_s=0.2, status_fields=lambda: fields, configure=configured.append)  # fmt: skip
    deltas: list[Envelope] = []
    sync.on("gallery", deltas.append)
    sync.start()
    assert configured == [sync._client]  # configure(client) ran before connecting
    reader = open_ledger(url, RULES)
    try:
        def step_until(cond: Any, what: str) -> None:
            deadline = time.monotonic() + 10
            while not cond():
                assert time.monotonic() < deadline, f"timed out waiting for {what}"
                sync.step()
                time.sleep(0.05)

        step_until(lambda: ledger.stats()["outbox"] == 0, "the fare's ack")
        step_until(lambda: reader.bus_status().get("bus-1", {}).get("body", {}).get("gallery_version") == 7,
                   "the heartbeat with the gallery version")  # fmt: skip
        assert reader.bus_status()["bus-1"]["body"]["pending_erasures"] == 2
        delta = GalleryDelta(base_version=6, version=7, model_sha256="0" * 64, nonce="n", ciphertext="c")
        payload = protocol.encode(Envelope.make("gallery", "cloud", delta), cloud_key)
        service._client.publish(protocol.topic_for("gallery", "bus-1"), payload, qos=1)
        step_until(lambda: deltas, "the gallery delta at the bus")
        assert deltas[0].body.version == 7
        sync._client.publish(protocol.topic_for("gallery_ack", "bus-1"),
                             sync._sign("gallery_ack", GalleryAck(version=7)), qos=1)  # fmt: skip
        step_until(lambda: acks, "the gallery ack at the cloud")
        assert acks[0].sender == "bus-1" and acks[0].body.version == 7
    finally:
        sync.close()
        stop.set()
        cloud.join(10)
        reader.close()
        ledger.close()
        led.close()


def test_after_days_away_an_ack_that_waited_at_the_broker_still_empties_the_outbox(
    mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    """An ack that waited days at the broker is outside the freshness window, but acks are
    idempotent by fare id (the cloud sends one only after its commit): the bus takes it and empties
    its outbox (issue 19, defect 6: freshness must not block acks). A second fare, sent after,
    is acknowledged fresh by the cloud."""
    cloud_key, bus_key = protocol.generate_key(), protocol.generate_key()
    ledger = Ledger(tmp_path / "bus-1.db", RULES, bus_id="bus-1")
    fare_id = ledger.charge("rider-1", "12", T0, trip_id="t1").fare_id
    sync = BusSync("bus-1", ledger, bus_key, cloud_key.public_key(), mosquitto.config_for("bus-1"), ack_timeout_s=1)
    old = protocol.now_ms() - 3 * 24 * 3600 * 1000
    stale = protocol.encode(Envelope.make("ack", "cloud", Ack(fare_ids=[fare_id]), sent_ms=old), cloud_key)
    sender = None
    try:
        sender = connect(mosquitto.config_for("cloud"), "cloud-test", clean_start=True)
        sync.start()
        assert sync.subscribed.wait(10)
        sender.publish(protocol.topic_for("ack", "bus-1"), stale, qos=1).wait_for_publish(5)
        _wait(lambda: (sync.step(), sync.stats.acked_fares)[1] == 1, 10, "the old ack")
        assert ledger.stats()["outbox"] == 0 and sync.stats.refused_messages == 0
        ledger.charge("rider-2", "12", T0, trip_id="t1")

        url = f"sqlite:///{tmp_path / 'cloud.db'}"
        led = open_ledger(url, RULES)
        led.register_bus("bus-1", protocol.public_key_text(bus_key.public_key()))
        service = CloudService(led, cloud_key, mosquitto.config_for("cloud"))
        stop = threading.Event()
        thread = threading.Thread(target=service.run, args=(stop,), daemon=True)
        thread.start()
        _wait(lambda: (sync.step(), ledger.stats()["outbox"])[1] == 0, 15, "the fresh ack")
        assert ledger.stats()["acks"] == 2
        stop.set()
        thread.join(10)
        led.close()
    finally:
        sync.close()
        if sender is not None:
            sender.disconnect()
            sender.loop_stop()
        ledger.close()
