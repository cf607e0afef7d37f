"""The whole system, as deployed: ``facefare bus run`` and ``facefare cloud run`` as real processes.

An operator enrolls a man from one photo (a frame of face_noface.mov, ``facefare enroll``) and
Lin-Manuel Miranda, registers bus-1 for the gallery and the ledger; the cloud service runs against
a real Mosquitto broker; the bus's camera plays the Hamilton clip (Lin only talks: no consent)
then single_face.mp4 (the man goes from neutral to a smile). The bus receives its sealed gallery
over MQTT, charges the man offline into its own ledger, and the fare reaches the cloud ledger
exactly once; the bus's outbox is empty when it stops.

    camera -> edge pipeline -> ledger -> outbox -> MQTT -> cloud ledger;  gallery <- MQTT <- enrollment
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cloud_sync import protocol
from cloud_sync.mqtt import connect, subscribe
from facefare.cli import main
from tests.helpers import FARES_TOML, mqtt_toml, provision_bus
from tests.servers import Inbox

pytestmark = pytest.mark.timeout(300)




def test_a_rider_enrolled_in_the_cloud_is_charged_on_the_bus_and_settled_in_the_cloud(
    models_dir: Path, faces_dir: Path, mosquitto, tmp_path: Path
) -> None:
    # Provisioning (tests/helpers.py): the cloud's key, the bus's key registered with the ledger, its
    # gallery secret; the operator enrolls the man (a frame of another recording of him) and Lin, and
    # the deltas wait at the broker (retained). The camera: the Hamilton clip, then the man's boarding.
    p = provision_bus(tmp_path, models_dir, faces_dir, mosquitto)
    cloud_toml, bus_dir, cloud_public, camera_file, bus_key = (
        p.cloud_toml, p.bus_dir, p.cloud_public, p.camera_file, p.bus_key)
    cloud_cli, runner = p.cloud_cli, CliRunner()

    cloud = subprocess.Popen([sys.executable, "-m", "facefare.cli", "--config", str(cloud_toml), "cloud", "run"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    bus_toml = tmp_path / "bus.toml"
    bus_toml.write_text(
        f'data_dir = "{bus_dir}"\nlog_level = "INFO"\n[models]\ndir = "{models_dir}"\n'
        f'[ledger]\nbus_id = "bus-1"\n[camera]\ntype = "file"\ndevice = "{camera_file}"\n'
        f'[sync]\ncloud_public_key = "{cloud_public}"\nheartbeat_interval_s = 2\n'
        f'[enrollment]\ngallery_key_file = "{bus_dir / "gallery.key"}"\n'
        # recorded footage cannot react to the door's prompt (docs/presentation-attacks.md)
        "[liveness]\nchallenge = false\n"
        + FARES_TOML + mqtt_toml(mosquitto.config_for("bus-1"))
    )
    fleet = connect(mosquitto.config_for("dashboard"), "test-dashboard", clean_start=True)
    inbox = Inbox()
    fleet.on_message = inbox.on_message
    subscribe(fleet, [(protocol.topic_for("decision", "bus-1"), 1)])
    try:
        bus = subprocess.run([sys.executable, "-m", "facefare.cli", "--config", str(bus_toml), "bus", "run"],
                             capture_output=True, text=True, timeout=240, env=os.environ)  # fmt: skip
        assert bus.returncode == 0, bus.stdout + bus.stderr
        assert "1 charged" in bus.stdout, bus.stdout + bus.stderr
        assert "gallery" in bus.stderr and "in sync at version 1" in bus.stderr, bus.stderr
        # The fleet saw the door's decision, signed by the bus, with the fare and no image.
        msg = inbox.wait_for(protocol.topic_for("decision", "bus-1"))
        event = protocol.parse(msg.topic, msg.payload, {"bus-1": bus_key.public_key()}.get).body
        assert (event.action, event.rider_id, event.amount_minor, event.currency) == ("charge", "man", 250, "EUR")
    finally:
        fleet.disconnect()
        fleet.loop_stop()
        cloud.send_signal(signal.SIGTERM)
        cloud_out = cloud.communicate(timeout=30)[0]
    assert cloud.returncode in (0, -signal.SIGTERM), cloud_out

    # The bus: one fare for the man, acknowledged by the cloud, nothing left in the outbox.
    bus_db = sqlite3.connect(bus_dir / "ledger.db")
    assert bus_db.execute("SELECT rider_id, amount_minor FROM fares").fetchall() == [("man", 250)]
    assert bus_db.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0
    assert bus_db.execute("SELECT count(*) FROM acks").fetchone()[0] == 1

    # The cloud: the same fare, once, and no difference with the bus's own export.
    export = runner.invoke(main, ["--config", str(bus_toml), "ledger", "export", "--format", "json", "--fares"])
    assert export.exit_code == 0, export.output
    (tmp_path / "bus-1.json").write_text(export.output)
    res = runner.invoke(main, ["--config", str(cloud_toml), "cloud", "reconcile", str(tmp_path / "bus-1.json")])
    assert res.exit_code == 0, res.output  # no difference between bus and cloud
    stats = cloud_cli("cloud", "stats")
    assert "fares 1" in stats, stats
    assert json.loads(export.output)  # the export is real JSON with the fare in it
