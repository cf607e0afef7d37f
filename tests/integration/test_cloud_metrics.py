"""The cloud ledger's and enrollment's metrics, read over HTTP from a real ``/metrics`` endpoint while a
real CloudService takes a real bus's fares off a real Mosquitto (and refuses a forged message)."""

from __future__ import annotations

import math
import socket
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from cloud_sync import protocol
from cloud_sync.bus_sync import BusSync
from cloud_sync.cloud.ledger import open_ledger
from cloud_sync.cloud.service import CloudService
from cloud_sync.devservers.mosquitto_server import MosquittoServer
from cloud_sync.protocol import Envelope, Heartbeat
from edge.fares.ledger import Ledger
from edge.fares.rules import FaresConfig
from enrollment.store import RiderRecord, TemplateStore
from facefare.metrics import cloud_registry, serve, watch_enrollment

RULES = FaresConfig(routes={"12": 250}, offline_credit_limit_minor=10**8, timezone="UTC")
T0 = datetime(2025, 3, 3, 5, 0, tzinfo=UTC)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    assert "rider-1" not in text and "secret-rider" not in text  # no metric names a rider
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}  # fmt: skip


def test_cloud_and_enrollment_metrics_over_http(mosquitto: MosquittoServer, tmp_path: Path) -> None:
    cloud_key, bus_key = protocol.generate_key(), protocol.generate_key()
    url = f"sqlite:///{tmp_path / 'cloud.db'}"
    led = open_ledger(url, RULES)
    led.register_bus("bus-1", protocol.public_key_text(bus_key.public_key()))
    service = CloudService(led, cloud_key, mosquitto.config_for("cloud"), settle_interval_s=1,
                           settle_ledger=open_ledger(url, RULES))  # fmt: skip
    registry, seen = cloud_registry(service)
    for msg_type in ("heartbeat", "decision", "gallery_ack"):
        service.on(msg_type, seen)
    store = TemplateStore.open(tmp_path / "store.db", tmp_path / "store.key")
    rng = np.random.default_rng(1)
    store.add_rider(RiderRecord(rider_id="secret-rider"), [rng.normal(size=128)], model_sha256="0" * 64)
    watch_enrollment(registry, store)
    server = serve(registry, "127.0.0.1", _free_port(), "cloud")
    assert server is not None
    stop = threading.Event()
    cloud = threading.Thread(target=service.run, args=(stop,), daemon=True)
    cloud.start()
    assert service.connected.wait(10)

    ledger = Ledger(tmp_path / "bus-1.db", RULES, bus_id="bus-1")
    ledger.charge("rider-1", "12", T0, trip_id="t1")
    ledger.charge("rider-2", "12", T0, trip_id="t1")
    sync = BusSync("bus-1", ledger, bus_key, cloud_key.public_key(), mosquitto.config_for("bus-1"),
                   heartbeat_interval_s=0.2)  # fmt: skip
    sync.start()
    try:
        deadline = time.monotonic() + 15
        while ledger.stats()["outbox"] or not scrape(server.port).get(
            ("facefare_cloud_bus_last_seen_timestamp_seconds", (("bus", "bus-1"),))
        ):
            assert time.monotonic() < deadline, "the fares or the heartbeat did not reach the cloud"
            sync.step()
            time.sleep(0.05)
        # Someone without bus-1's key speaks for it.
        forged = protocol.encode(Envelope.make("heartbeat", "bus-1", Heartbeat(outbox_backlog=0)),
                                 protocol.generate_key())  # fmt: skip
        sync._client.publish(protocol.topic_for("heartbeat", "bus-1"), forged, qos=1).wait_for_publish(5)
        while True:
            m = scrape(server.port)
            refused = m.get(("facefare_cloud_messages_refused_total", (("reason", "signature"),)))
            if refused and not math.isnan(m[("facefare_cloud_settlement_lag_seconds", ())]):  # settlement ran
                break
            assert time.monotonic() < deadline + 10, m
            time.sleep(0.1)
    finally:
        sync.close()
        stop.set()
        cloud.join(10)
        server.close()
    assert m[("facefare_cloud_fares_ingested_total", ())] == 2
    assert refused == 1
    assert m[("facefare_cloud_batch_commit_seconds_count", ())] >= 1
    assert 0 <= m[("facefare_cloud_settlement_lag_seconds", ())] < 10
    assert m[("facefare_cloud_connected", ())] == 1
    assert abs(m[("facefare_cloud_bus_last_seen_timestamp_seconds", (("bus", "bus-1"),))] - time.time()) < 30
    assert m[("facefare_enrollment_enrollments_total", ())] == 1
    assert m[("facefare_enrollment_duplicates_flagged_total", ())] == 0
    store.close()
    ledger.close()
    led.close()
