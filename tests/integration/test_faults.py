"""Issue 19: faults of the sync over a real Mosquitto (TLS, passwords, ACL) with the cloud service running.

* defect 2: the bus's sync survives a ledger that fails under it (logged, reported in the
  heartbeat, retried) and drains the outbox once the ledger works again;
* defect 6: a bus clock two hours off still syncs both ways; the skew is in the heartbeat and
  the cloud records its own measure;
* defect 8: an outbox row the protocol refuses is quarantined (and shown), the fares after it sync;
* also: a fare the cloud refuses for good (``conflict``) is recorded as refused, not acknowledged.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cloud_sync import protocol
from cloud_sync.bus_sync import BusSync
from cloud_sync.cloud.ledger import CloudLedger, FaresMessage, open_ledger
from cloud_sync.cloud.service import CloudService
from cloud_sync.devservers.mosquitto_server import MosquittoServer
from cloud_sync.protocol import Fare
from edge.fares.ledger import Ledger
from edge.fares.rules import FaresConfig

RULES = FaresConfig(routes={"12": 250}, offline_credit_limit_minor=10**8, timezone="UTC")
T0 = datetime(2025, 3, 3, 8, 0, tzinfo=UTC)
HOURS_2 = 2 * 3600 * 1000


class Cloud:
    def __init__(self, broker: MosquittoServer, workdir: Path, bus_keys: dict[str, Any]) -> None:
        url = f"sqlite:///{workdir / 'cloud.db'}"
        self.ledger = open_ledger(url, RULES)
        for bus, key in bus_keys.items():
            self.ledger.register_bus(bus, protocol.public_key_text(key.public_key()))
        self.reader: CloudLedger = open_ledger(url, RULES)
        self.key = protocol.generate_key()
        self.service = CloudService(self.ledger, self.key, broker.config_for("cloud"), settle_interval_s=0.5)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.service.run, args=(self.stop,), daemon=True)
        self.thread.start()
        assert self.service.connected.wait(10)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.reader.close()
        self.ledger.close()


BUS_KEY = protocol.generate_key()


@pytest.fixture
def cloud(mosquitto: MosquittoServer, tmp_path: Path) -> Iterator[Cloud]:
    c = Cloud(mosquitto, tmp_path, {"bus-1": BUS_KEY})
    yield c
    c.close()


class RunningSync:
    """BusSync.run in its own thread, as the bus runs it."""

    def __init__(self, sync: BusSync) -> None:
        self.sync = sync
        self.stop = threading.Event()
        self.thread = threading.Thread(target=sync.run, args=(self.stop,), kwargs={"max_backoff_s": 0.5},
                                       daemon=True)  # fmt: skip
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


def wait(cond: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_bus_clock_two_hours_off_still_syncs_and_its_skew_is_reported(
    mosquitto: MosquittoServer, cloud: Cloud, tmp_path: Path
) -> None:
    """Defect 6: the cloud refused such a bus's fares as stale and the bus the cloud's acks."""
    ledger = Ledger(tmp_path / "bus.db", RULES, bus_id="bus-1")
    fare_id = ledger.charge("r1", "12", T0, trip_id="t").fare_id
    sync = BusSync("bus-1", ledger, BUS_KEY, cloud.key.public_key(), mosquitto.config_for("bus-1"),
                   heartbeat_interval_s=0.3, clock_ms=lambda: protocol.now_ms() + HOURS_2)  # fmt: skip
    running = RunningSync(sync)
    try:
        wait(lambda: ledger.stats()["outbox"] == 0, 15, "the cloud's ack")
        assert fare_id in cloud.reader.fares_of_bus("bus-1")
        wait(lambda: cloud.reader.bus_status().get("bus-1", {}).get("body", {}).get("clock_skew_ms") is not None,
             10, "a heartbeat with the bus's skew")  # fmt: skip
        body = cloud.reader.bus_status()["bus-1"]["body"]
        assert abs(body["clock_skew_ms"] - HOURS_2) < 10_000, body
        assert abs(body["cloud_measured_skew_ms"] - HOURS_2) < 10_000, body
        assert cloud.reader.rejection_counts().get("stale", 0) == 0
    finally:
        running.close()
        ledger.close()


def test_an_outbox_row_the_protocol_refuses_is_quarantined_and_later_fares_sync(
    mosquitto: MosquittoServer, cloud: Cloud, tmp_path: Path
) -> None:
    """Defect 8: a route id over 200 characters stopped the outbox at that row for good."""
    ledger = Ledger(tmp_path / "bus.db", FaresConfig(routes={"12": 250, "r" * 201: 250}, timezone="UTC"),
                    bus_id="bus-1")  # fmt: skip
    bad = ledger.charge("r1", "r" * 201, T0, trip_id="t").fare_id
    good = [ledger.charge(f"r{i}", "12", T0, trip_id="t").fare_id for i in range(2, 5)]
    sync = BusSync("bus-1", ledger, BUS_KEY, cloud.key.public_key(), mosquitto.config_for("bus-1"))
    running = RunningSync(sync)
    try:
        wait(lambda: ledger.stats()["outbox"] == 0, 15, "the good fares' acks")
        assert set(good) <= set(cloud.reader.fares_of_bus("bus-1"))
        st = ledger.stats()
        assert (st["acks"], st["quarantined"]) == (3, 1)
        assert [(r["fare_id"], r["source"]) for r in ledger.rejections()] == [(bad, "bus")]
        assert "route_id" in ledger.rejections()[0]["reason"]
        assert sync.stats.quarantined_fares == 1
    finally:
        running.close()
        ledger.close()


def test_a_fare_the_cloud_refuses_for_good_is_shown_as_refused_not_acknowledged(
    mosquitto: MosquittoServer, cloud: Cloud, tmp_path: Path
) -> None:
    """Also: ``conflict`` fares went into the bus's ``acks`` table like acknowledged ones."""
    ledger = Ledger(tmp_path / "bus.db", RULES, bus_id="bus-1")
    mine = ledger.charge("r1", "12", T0, trip_id="t")
    other = Fare.model_validate({**ledger.outbox()[0]["payload"], "amount_minor": 999})
    cloud.reader.ingest([FaresMessage("bus-1", "a" * 32, 0, [other])])  # the same id, another fare
    sync = BusSync("bus-1", ledger, BUS_KEY, cloud.key.public_key(), mosquitto.config_for("bus-1"))
    running = RunningSync(sync)
    try:
        wait(lambda: ledger.stats()["outbox"] == 0, 15, "the cloud's answer")
        st = ledger.stats()
        assert (st["acks"], st["rejected_by_cloud"]) == (0, 1)
        assert [(r["fare_id"], r["source"], r["reason"]) for r in ledger.rejections()] == [
            (mine.fare_id, "cloud", "conflict")]  # fmt: skip
    finally:
        running.close()
        ledger.close()


def test_the_sync_thread_survives_a_failing_ledger_reports_it_and_recovers(
    mosquitto: MosquittoServer, cloud: Cloud, tmp_path: Path
) -> None:
    """Defect 2: one failed outbox read or ack killed the sync thread for good."""
    path = tmp_path / "bus.db"
    ledger = Ledger(path, RULES, bus_id="bus-1")
    sync = BusSync("bus-1", ledger, BUS_KEY, cloud.key.public_key(), mosquitto.config_for("bus-1"),
                   heartbeat_interval_s=0.2)  # fmt: skip
    fresh: Ledger | None = None
    running = RunningSync(sync)
    try:
        assert sync.connected.wait(10)
        # Every read and write of the sync's ledger now raises. The sync is handed a connection that
        # was closed before it got it: closing one while another thread is inside it is undefined
        # behaviour in SQLite (it crashed the test process once), a closed one raises cleanly.
        broken = Ledger(path, RULES, bus_id="bus-1")
        broken.db.conn.close()
        sync.ledger = broken
        wait(lambda: sync.stats.failed_rounds >= 3, 10, "failed rounds")
        assert running.thread.is_alive(), "the sync thread died"
        assert sync.last_error and "closed" in sync.last_error
        wait(lambda: cloud.reader.bus_status().get("bus-1", {}).get("body", {}).get("sync", {}).get("ok") is False,
             10, "a heartbeat saying the sync fails")  # fmt: skip
        # The ledger works again (here: opened anew); fares charged meanwhile go out.
        fresh = Ledger(path, RULES, bus_id="bus-1")
        fare_id = fresh.charge("r1", "12", T0, trip_id="t").fare_id
        sync.ledger = fresh
        wait(lambda: fresh.stats()["outbox"] == 0, 15, "the outbox drained after recovery")
        assert fare_id in cloud.reader.fares_of_bus("bus-1")
        wait(lambda: sync.last_error is None, 5, "the sync's recovery")
    finally:
        running.close()  # the sync thread stops before its ledgers close
        for still_open in (fresh, ledger):
            if still_open is not None:
                still_open.close()
