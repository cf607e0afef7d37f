"""Issue 19, defect 3: a gallery write error must not kill the MQTT network loop, and the delta
that could not be applied arrives later (resync from the bus's version); a bus's gallery_ack can
confirm no more than was published. Real Mosquitto, real SQLite files (no face models needed:
the riders' templates are made-up vectors)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from cloud_sync.gallery.bus import BusGallery
from cloud_sync.mqtt import connect, make_client, wait_connected
from cloud_sync.protocol import Envelope, GalleryAck, encode, generate_key, topic_for
from enrollment.distribution import GalleryDistributor
from enrollment.store import RiderRecord, TemplateStore

MODEL = "ab" * 32


def wait_until(condition, timeout_s: float = 10.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"{what}: not met in time")
        time.sleep(0.02)


def test_a_locked_gallery_keeps_the_network_loop_and_the_erasure_still_arrives(mosquitto, tmp_path: Path) -> None:
    store = TemplateStore.open(tmp_path / "store.db", tmp_path / "store.key")
    rng = np.random.default_rng(7)
    for rider in ("alice", "bob"):
        vec = rng.normal(size=128)
        store.add_rider(RiderRecord(rider_id=rider), [vec / np.linalg.norm(vec)], model_sha256=MODEL)
    cloud_key, bus_key = generate_key(), generate_key()
    dist = GalleryDistributor(store, cloud_key, MODEL, bus_keys={"bus-1": bus_key.public_key()}.get)
    secret = dist.register_bus("bus-1")
    cloud = connect(mosquitto.config_for("cloud"), "cloud")
    dist.attach(cloud)
    dist.sync()
    path = tmp_path / "bus-1.db"
    bus = BusGallery(path, "bus-1", secret, MODEL, cloud_key.public_key(), bus_key=bus_key, busy_timeout_s=0.3,
                     resync_backoff_s=0.3)  # fmt: skip
    client = make_client(mosquitto.config_for("bus-1"), "bus-1")
    bus.attach(client)
    locker = None
    try:
        wait_connected(client)
        wait_until(lambda: sorted(bus.riders) == ["alice", "bob"], what="the first delta")
        wait_until(lambda: all(b["acked_version"] == b["version"] for b in dist.buses()), what="the first ack")

        locker = sqlite3.connect(path)  # another process holds gallery.db's write lock
        locker.execute("BEGIN EXCLUSIVE")
        dist.erase("bob")
        dist.flush()
        wait_until(lambda: bus.rejected["apply_failed"] >= 1, what="the failed apply")
        assert client._thread is not None and client._thread.is_alive(), "the MQTT network thread died"
        assert "bob" in bus.riders

        # A signed ack claiming a version far ahead of what was published confirms nothing.
        ahead = encode(Envelope.make("gallery_ack", "bus-1", GalleryAck(version=2**62)), bus_key)
        dist.handle(topic_for("gallery_ack", "bus-1"), ahead)
        assert not any(s.confirmed for s in dist.erase_status("bob"))

        locker.rollback()
        locker.close()
        locker = None
        wait_until(lambda: "bob" not in bus.riders, 15, "the erasure after the resync")
        wait_until(lambda: all(s.confirmed for s in dist.erase_status("bob")), 10, "the erasure's confirmation")
        assert bus.riders == ["alice"]
    finally:
        if locker is not None:
            locker.close()
        client.disconnect()
        client.loop_stop()
        cloud.disconnect()
        cloud.loop_stop()
        bus.close()


def test_a_delta_holding_an_erased_template_expires_at_the_broker_and_the_bus_resyncs(mosquitto, tmp_path) -> None:
    """Defect 11: for an offline bus, the delta that added a rider stayed queued in mosquitto.db
    (decryptable with keys the cloud holds) after the rider was erased, up to the 7-day session expiry."""
    store = TemplateStore.open(tmp_path / "store.db", tmp_path / "store.key")
    rng = np.random.default_rng(11)

    def add(rider: str) -> None:
        vec = rng.normal(size=128)
        store.add_rider(RiderRecord(rider_id=rider), [vec / np.linalg.norm(vec)], model_sha256=MODEL)

    add("alice")
    cloud_key, bus_key = generate_key(), generate_key()
    dist = GalleryDistributor(store, cloud_key, MODEL, bus_keys={"bus-1": bus_key.public_key()}.get, delta_expiry_s=1)
    secret = dist.register_bus("bus-1")
    cloud = connect(mosquitto.config_for("cloud"), "cloud")
    dist.attach(cloud)
    dist.sync()
    bus = BusGallery(tmp_path / "bus-1.db", "bus-1", secret, MODEL, cloud_key.public_key(), bus_key=bus_key)
    client = make_client(mosquitto.config_for("bus-1"), "bus-1")
    bus.attach(client)
    try:
        wait_connected(client)
        wait_until(lambda: bus.riders == ["alice"], what="the first delta")
        client.disconnect()  # the bus goes away; its session (and queue) stays at the broker
        client.loop_stop()

        add("carol")
        dist.sync()  # a delta with carol's template, queued for the bus
        dist.erase("carol")  # and her erasure
        dist.flush()
        time.sleep(2.5)  # longer than the deltas' expiry

        client = make_client(mosquitto.config_for("bus-1"), "bus-1")
        bus.attach(client)
        wait_connected(client)
        wait_until(lambda: bus.version == dist.buses()[0]["version"], 10, "the resync from the bus's version")
        assert bus.applied[0] == (0, 1) and all(base == 1 for base, _ in bus.applied[1:]), bus.applied
        assert bus.riders == ["alice"]
        wait_until(lambda: all(s.confirmed for s in dist.erase_status("carol")), 10, "the erasure's confirmation")
    finally:
        client.disconnect()
        client.loop_stop()
        cloud.disconnect()
        cloud.loop_stop()
        bus.close()
