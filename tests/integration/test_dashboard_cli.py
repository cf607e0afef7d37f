"""``facefare dashboard run`` as an operator starts it: a config file, a keys file, a user, a real broker."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from cloud_sync.devservers.mosquitto_server import MosquittoServer, free_port
from cloud_sync.protocol import generate_key, now_ms, public_key_text
from facefare.cli import main
from facefare.demo.fleet import BusPublisher

pytestmark = pytest.mark.timeout(60)


def wait_for(check, timeout_s: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def test_dashboard_run_serves_the_fleet_from_the_broker(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    keys = {b: generate_key() for b in ("bus-1", "bus-2", "bus-3")}
    (tmp_path / "bus-keys.txt").write_text("".join(f"{b} {public_key_text(k.public_key())}\n" for b, k in keys.items()))
    mq = mosquitto.config_for("dashboard")
    port = free_port()
    config = tmp_path / "facefare.toml"
    config.write_text(f"""
data_dir = "{tmp_path / "data"}"
[mqtt]
host = "{mq.host}"
port = {mq.port}
ca_file = "{mq.ca_file}"
username = "dashboard"
password_file = "{mq.password_file}"
[dashboard]
port = {port}
bus_keys_file = "{tmp_path / "bus-keys.txt"}"
""")
    runner = CliRunner()
    args = ["--config", str(config), "dashboard", "add-user", "ops", "--role", "read-only"]
    assert runner.invoke(main, args, input="ops password\nops password\n").exit_code == 0

    cmd = [str(Path(sys.executable).with_name("facefare")), "--config", str(config), "dashboard", "run"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=5) as web:
            wait_for(lambda: web.get("/login").status_code == 200, what="the dashboard to listen")
            r = web.post("/login", data={"username": "ops", "password": "ops password"})
            assert r.status_code == 303
            snap = web.get("/api/state").json()
            assert [b["state"] for b in snap["buses"]] == ["unknown"] * 3  # registered, not heard from yet

            bus = BusPublisher("bus-1", keys["bus-1"], mosquitto.config_for("bus-1"))
            bus.heartbeat(outbox_backlog=2, gallery_version=4)
            day = wait_for(lambda: web.get("/api/state").json()["service_day"])
            bus.fares([{
                "fare_id": str(uuid.uuid4()), "bus_id": "bus-1", "trip_id": "t", "route_id": "X1", "rider_id": "r-1",
                "concession": "adult", "boarded_at": "", "boarded_ms": now_ms(), "service_day": day,
                "amount_minor": 400, "base_minor": 400, "currency": "EUR", "reason": "paid", "rules_digest": "d",
                "recorded_at": "",
            }])  # fmt: skip
            snap = wait_for(lambda: (s := web.get("/api/state").json())["fares_today"] and s, what="the fare")
            assert snap["buses"][0]["state"] == "online" and snap["buses"][0]["gallery_version"] == 4
            assert snap["revenue_today"] == [{"currency": "EUR", "minor": 400, "text": "EUR 4.00"}]
            r = web.post("/api/alerts/offline:bus-1/ack", headers={"x-requested-with": "facefare"})
            assert r.status_code == 403  # read-only
            bus.close()
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=15)
    assert proc.returncode in (0, -signal.SIGTERM), out  # uvicorn shuts down, then re-raises the signal
    assert "Traceback" not in out
    assert f"fleet dashboard on http://127.0.0.1:{port}/" in out


def test_dashboard_run_refuses_to_start_without_keys_or_users(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEFARE_HOME", str(tmp_path))
    r = CliRunner().invoke(main, ["dashboard", "run"])
    assert r.exit_code == 1 and "dashboard.bus_keys_file" in r.output
    (tmp_path / "keys.txt").write_text("")
    monkeypatch.setenv("FACEFARE_DASHBOARD__BUS_KEYS_FILE", str(tmp_path / "keys.txt"))
    r = CliRunner().invoke(main, ["dashboard", "run"])
    assert r.exit_code == 1 and "add-user" in r.output


def test_demo_dashboard_shows_what_the_demo_bus_charged(tmp_path: Path) -> None:
    """What ``facefare demo --dashboard`` does after the clip: the demo bus's ledger reaches the page."""
    from datetime import UTC, datetime

    from edge.door.pipeline import DoorDecision
    from edge.fares.ledger import Ledger
    from edge.fares.rules import FaresConfig
    from facefare.config import load_config
    from facefare.demo import fleet as fleet_demo

    cfg = load_config(None, dashboard={"port": 0}, fares={"routes": {"1": 250}})
    fleet, password = fleet_demo.start_demo_dashboard(cfg, tmp_path / "dashboard")
    try:
        ledger = Ledger(tmp_path / "ledger.db", FaresConfig(routes={"1": 250}), bus_id=fleet_demo.DEMO_BUS)
        fare = ledger.charge("lin", "1", datetime.now(UTC), trip_id="demo")
        ledger.close()
        decisions = [DoorDecision(2, 164, 5.4, "charge", "lin", "matched", "EUR 2.50", fare=fare),
                     DoorDecision(3, 200, 6.6, "refuse", None, "unknown", "see the driver")]  # fmt: skip
        assert fleet_demo.publish_demo_bus(fleet, {"decisions": decisions}, tmp_path / "ledger.db", "1") == 1
        with httpx.Client(base_url=fleet.server.url, timeout=5) as web:
            web.post("/login", data={"username": "admin", "password": password})
            snap = wait_for(lambda: (s := web.get("/api/state").json())["fares_today"] and s, what="the demo fare")
        (bus,) = snap["buses"]
        assert bus["bus_id"] == "demo-bus" and bus["state"] == "online" and bus["outbox_backlog"] == 1
        assert snap["revenue_today"][0]["text"] == "EUR 2.50"
        assert [(d["action"], d["reason"]) for d in snap["decisions"]] == [("refuse", "unknown"), ("charge", "matched")]
    finally:
        fleet.stop()
    assert not fleet.broker.running
