"""Gallery distribution over a real Mosquitto (TLS, passwords, ACLs): enroll the shipped identities,
sync two buses, recognise the riders there; erase one while a bus is offline, see both buses drop it
(the offline one on reconnect, before it may charge) and confirm; refuse tampered and foreign deltas."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import numpy as np
import pytest

from cloud_sync.gallery.bus import BusGallery
from cloud_sync.mqtt import connect, make_client, wait_connected
from cloud_sync.protocol import generate_key, topic_for
from enrollment.config import EnrollmentConfig
from enrollment.distribution import GalleryDistributor
from enrollment.enroll import Enroller
from enrollment.store import RiderRecord, TemplateStore

ENROLL = {
    "obama": "obama.jpg",
    "biden": "biden.jpg",
    "kit_harington": "kit_harington1.jpeg",
    "alex_lacamoire": "alex_lacamoire2.jpg",
    "lin_manuel_miranda": "lin_manuel_miranda.png",
}
PROBES = {"obama": "obama-480p.jpg", "biden": "biden2.jpg", "kit_harington": "kit_harington2.jpeg",
          "alex_lacamoire": "alex_lacamoire1.jpg"}  # fmt: skip
THRESHOLD, MARGIN = 0.5, 0.1  # edge.door.pipeline.PipelineConfig defaults


@pytest.fixture(scope="module")
def enrolled(engine, faces_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The shipped identities enrolled in a store, and one probe embedding (another photo) per rider."""
    tmp = tmp_path_factory.mktemp("gallery-sync")
    store = TemplateStore.open(tmp / "store.db", tmp / "store.key")
    enroller = Enroller(engine, store, EnrollmentConfig(upsample=0))
    for rider, photo in ENROLL.items():
        result = enroller.enroll(RiderRecord(rider_id=rider), [(photo, faces_dir / photo)])
        assert result.status == "enrolled", result
    probes = {r: enroller.check_photo(p, faces_dir / p).embedding for r, p in PROBES.items()}
    return store, enroller.model_sha256, probes


def wait_until(condition, timeout_s: float = 10.0) -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > end:
            pytest.fail("condition not met in time")
        time.sleep(0.02)


def recognised(bus: BusGallery, probe: np.ndarray) -> str | None:
    m = bus.match(probe)
    return m.rider_id if m.distance <= THRESHOLD and m.margin >= MARGIN else None


def test_enroll_sync_recognise_erase_and_tamper(enrolled, mosquitto, tmp_path: Path) -> None:
    store, model, probes = enrolled
    cloud_key = generate_key()
    bus_keys = {b: generate_key() for b in ("bus-1", "bus-2")}
    dist = GalleryDistributor(store, cloud_key, model, bus_keys={b: k.public_key() for b, k in bus_keys.items()}.get)
    secrets = {b: dist.register_bus(b) for b in bus_keys}
    cloud = connect(mosquitto.config_for("cloud"), "cloud")
    dist.attach(cloud)

    def bus_node(bus_id: str) -> tuple[BusGallery, object]:
        gallery = BusGallery(tmp_path / f"{bus_id}.db", bus_id, secrets[bus_id], model, cloud_key.public_key(),
                             bus_key=bus_keys[bus_id])  # fmt: skip
        client = make_client(mosquitto.config_for(bus_id), bus_id)
        gallery.attach(client)  # before connecting: nothing queued for the bus may slip past
        wait_connected(client)
        return gallery, client

    dist.sync()  # published retained: a bus connecting later gets the newest delta as its "gallery head"
    buses = {b: bus_node(b) for b in bus_keys}
    try:
        head = {b["bus_id"]: b["version"] for b in dist.buses()}
        for bus_id, (bus, _) in buses.items():
            wait_until(lambda bus=bus, bus_id=bus_id: bus.version == head[bus_id])
            assert bus.ready and sorted(bus.riders) == sorted(ENROLL)
            for rider, probe in probes.items():
                assert recognised(bus, probe) == rider, (bus_id, rider)
        wait_until(lambda: all(b["acked_version"] == b["version"] for b in dist.buses()))

        # bus-2 goes offline; biden asks to be forgotten
        bus2, client2 = buses["bus-2"]
        client2.disconnect()
        client2.loop_stop()
        bus1, _ = buses["bus-1"]
        sealed_before = set(bus1.sealed_templates())
        dist.erase("biden")
        dist.flush()
        assert store.templates("biden") == []
        wait_until(lambda: "biden" not in bus1.riders)
        assert recognised(bus1, probes["biden"]) is None and recognised(bus1, probes["obama"]) == "obama"
        gone = sealed_before - set(bus1.sealed_templates())
        assert len(gone) == 1 and gone.isdisjoint(bus1.sealed_templates())
        assert not any(ct[:32] in bus1.stored_bytes() for ct in gone)  # overwritten, not just unlinked
        wait_until(lambda: [s.confirmed for s in dist.erase_status("biden")] == [True, False])

        # bus-2 comes back: it holds charges until the queued erase is applied
        assert recognised(bus2, probes["biden"]) == "biden"
        bus2.connected()
        assert not bus2.ready
        client2 = make_client(mosquitto.config_for("bus-2"), "bus-2")  # same session: the erase was queued for it
        bus2.attach(client2)
        buses["bus-2"] = (bus2, client2)
        wait_connected(client2)
        assert bus2.wait_ready(10.0)
        assert "biden" not in bus2.riders and recognised(bus2, probes["biden"]) is None
        wait_until(lambda: all(s.confirmed for s in dist.erase_status("biden")))
        assert [a["action"] for a in store.audit_log("biden")][-2:] == ["erase_confirmed", "erase_confirmed"]

        # a tampered delta and one sealed for another bus are refused; the gallery does not move
        store.add_rider(RiderRecord(rider_id="probe-rider"), [probes["kit_harington"] * 0 + 0.05], model_sha256=model)
        good = dist.build("bus-1")[0]
        data = json.loads(good.payload)
        ct = bytearray(base64.b64decode(data["body"]["ciphertext"]))
        ct[-1] ^= 0x40
        data["body"]["ciphertext"] = base64.b64encode(bytes(ct)).decode()
        version = bus1.version
        cloud.publish(topic_for("gallery", "bus-1"), json.dumps(data).encode(), qos=1).wait_for_publish(5)
        wait_until(lambda: bus1.rejected["signature"] == 1)
        cloud.publish(topic_for("gallery", "bus-2"), good.payload, qos=1).wait_for_publish(5)
        wait_until(lambda: bus2.rejected["topic"] + bus2.rejected["tampered"] == 1)
        assert bus1.version == version and "probe-rider" not in bus1.riders + bus2.riders
        cloud.publish(topic_for("gallery", "bus-1"), good.payload, qos=1).wait_for_publish(5)
        wait_until(lambda: "probe-rider" in bus1.riders)
    finally:
        for _, client in buses.values():
            client.disconnect()
            client.loop_stop()
        cloud.disconnect()
        cloud.loop_stop()


def test_cli_enroll_and_erase_publish_to_a_bus(engine, models_dir: Path, faces_dir: Path, mosquitto, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from click.testing import CliRunner

    from cloud_sync.protocol import save_private_key
    from enrollment.store import load_key
    from facefare.cli import main

    cfg = mosquitto.config_for("cloud")
    home = tmp_path / "home"
    env = {"FACEFARE_HOME": str(home), "FACEFARE_MODELS__DIR": str(models_dir), "FACEFARE_MQTT__HOST": cfg.host,
           "FACEFARE_MQTT__PORT": str(cfg.port), "FACEFARE_MQTT__CA_FILE": str(cfg.ca_file),
           "FACEFARE_MQTT__USERNAME": "cloud", "FACEFARE_MQTT__PASSWORD_FILE": str(cfg.password_file)}  # fmt: skip
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("FACEFARE_CONFIG", raising=False)
    cloud_key = generate_key()
    save_private_key(cloud_key, home / "cloud_key.pem")
    runner = CliRunner()
    res = runner.invoke(main, ["enrollment", "register-bus", "bus-3", "--out", str(tmp_path / "bus-3.key")])
    assert res.exit_code == 0, res.output
    (tmp_path / "photos" / "lin").mkdir(parents=True)
    (tmp_path / "photos" / "lin" / "lin.png").write_bytes((faces_dir / "lin_manuel_miranda.png").read_bytes())
    res = runner.invoke(main, ["enroll", str(tmp_path / "photos"), "--quiet"])
    assert res.exit_code == 0 and "published 1 gallery delta(s)" in res.output, res.output

    model = engine.embedder_sha256
    bus = BusGallery(tmp_path / "bus-3.db", "bus-3", load_key(tmp_path / "bus-3.key"), model, cloud_key.public_key(),
                     bus_key=generate_key())  # fmt: skip
    client = make_client(mosquitto.config_for("bus-3"), "bus-3")
    bus.attach(client)
    try:
        wait_connected(client)
        assert bus.wait_ready(10.0) and bus.riders == ["lin"]  # the retained head reached a bus that was never on
        res = runner.invoke(main, ["erase", "lin"])
        assert res.exit_code == 0, res.output
        assert "erased lin: 1 template(s) deleted" in res.output and "bus-3" in res.output
        wait_until(lambda: bus.riders == [])
        res = runner.invoke(main, ["erase", "status", "lin"])
        assert "rider lin: erased" in res.output and "bus-3" in res.output
    finally:
        client.disconnect()
        client.loop_stop()
