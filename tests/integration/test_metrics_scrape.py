"""A real Prometheus scrapes a real bus: ``facefare bus run`` on the shipped clip with metrics on.

Prometheus (Debian's package, started here on a free loopback port, scraping every second) reads
the bus's ``/metrics``; the test asks Prometheus's HTTP API what it saw and compares it with what
the bus itself reports when it stops. No cloud ledger runs, so Lin's fare stays in the outbox: the
backlog and the oldest unsent fare's age must show it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import FARES_TOML, mqtt_toml, provision_bus

pytestmark = pytest.mark.timeout(300)



def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]




class Prometheus:
    """A Prometheus server in ``workdir`` scraping ``targets`` every second; stopped by :meth:`close`."""

    def __init__(self, workdir: Path, targets: dict[str, str]) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus is not installed; run scripts/install-servers.sh as root", pytrace=False)
        workdir.mkdir(parents=True, exist_ok=True)
        scrape = "\n".join(
            f"  - job_name: bus\n    scrape_interval: 1s\n    scrape_timeout: 900ms\n"
            f"    static_configs:\n      - targets: ['{addr}']\n        labels: {{bus: '{bus}'}}"
            for bus, addr in targets.items()
        )
        (workdir / "prometheus.yml").write_text(f"global:\n  scrape_interval: 1s\nscrape_configs:\n{scrape}\n")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(workdir / "prometheus.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [binary, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=workdir,
        )  # fmt: skip
        self.workdir = workdir
        end = time.monotonic() + 30
        while time.monotonic() < end:
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        self.close()
        pytest.fail("prometheus did not become ready: " + (workdir / "prometheus.log").read_text()[-2000:])

    def query(self, expr: str) -> list[dict]:
        url = self.url + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=5) as r:
            data = json.load(r)
        assert data["status"] == "success", data
        return data["data"]["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def test_prometheus_scrapes_the_bus_decisions_and_backlog(
    models_dir: Path, faces_dir: Path, mosquitto, tmp_path: Path
) -> None:
    # Provisioned as in tests/e2e/test_bus_e2e.py, but with the bus's key unknown to the cloud ledger:
    # its fare stays in the outbox. The man of single_face.mp4 is charged once; Lin only talks.
    p = provision_bus(tmp_path, models_dir, faces_dir, mosquitto, register_key=False)
    bus_dir, cloud_public, camera_file = p.bus_dir, p.cloud_public, p.camera_file

    metrics_port = _free_port()
    bus_toml = tmp_path / "bus.toml"
    bus_toml.write_text(
        f'data_dir = "{bus_dir}"\nlog_level = "INFO"\n[models]\ndir = "{models_dir}"\n'
        f'[ledger]\nbus_id = "bus-1"\n[camera]\ntype = "file"\ndevice = "{camera_file}"\n'
        f'[sync]\ncloud_public_key = "{cloud_public}"\nheartbeat_interval_s = 2\n'
        f'[enrollment]\ngallery_key_file = "{bus_dir / "gallery.key"}"\n'
        f'[metrics]\nhost = "127.0.0.1"\nbus_port = {metrics_port}\n'
        # recorded footage cannot react to the door's prompt (docs/presentation-attacks.md)
        "[liveness]\nchallenge = false\n"
        + FARES_TOML + mqtt_toml(mosquitto.config_for("bus-1"))
    )
    prom = Prometheus(tmp_path / "prometheus", {"bus-1": f"127.0.0.1:{metrics_port}"})
    bus = subprocess.Popen([sys.executable, "-m", "facefare.cli", "--config", str(bus_toml), "bus", "run"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ)  # fmt: skip
    try:
        # The clip ends, the bus waits for the cloud to take Lin's fare (no cloud runs): Prometheus
        # has by then scraped the final counts. Wait until it shows the whole run, read what it
        # stored while the bus is still up (a failed scrape marks its series stale), then stop the bus.
        end = time.monotonic() + 200
        seen = None
        while time.monotonic() < end and bus.poll() is None:
            backlog = prom.value('facefare_bus_outbox_backlog{bus="bus-1"}')
            frames = prom.value('facefare_bus_frames_total{bus="bus-1"}')
            idle = prom.value('time() - facefare_bus_last_frame_timestamp_seconds{bus="bus-1"}')
            if backlog == 1 and frames and idle is not None and idle > 3:  # a fare waits and the clip ended
                seen = frames
                break
            time.sleep(1)
        assert seen is not None, f"prometheus never saw the finished run (bus exit {bus.poll()})"
        snapshot = {
            name: prom.query(expr)
            for name, expr in {
                "up": 'up{bus="bus-1"}',
                "decisions": 'sum by (action, reason) (facefare_bus_decisions_total{bus="bus-1"})',
                "oldest": 'max_over_time(facefare_bus_outbox_oldest_unsent_age_seconds{bus="bus-1"}[5m])',
                "wait": 'facefare_bus_decision_seconds_count{bus="bus-1"}',
                "smiles": 'facefare_bus_smile_attempts_total{bus="bus-1",action="charge"}',
                "gallery": 'facefare_bus_gallery_riders{bus="bus-1"}',
                "models": 'facefare_bus_models_info{bus="bus-1"}',
                "disk": 'facefare_bus_disk_free_bytes{bus="bus-1"}',
                "camera": 'facefare_bus_camera_ok{bus="bus-1"}',
                "fps": 'max_over_time(facefare_bus_fps{bus="bus-1"}[5m])',
                "all": '{bus="bus-1"}',
            }.items()
        }
        bus.send_signal(signal.SIGTERM)
        out, err = bus.communicate(timeout=60)
    finally:
        if bus.poll() is None:
            bus.kill()
            bus.communicate()
        prom.close()

    def value(name: str) -> float:
        return sum(float(r["value"][1]) for r in snapshot[name])

    assert value("up") == 1
    m = re.search(r"stopped after (\d+) frames; (\d+) decisions, (\d+) charged", out)
    assert m, out + err
    frames, decisions, charged = map(int, m.groups())
    assert charged == 1
    # Prometheus saw every frame and every decision the bus reports, by action and reason.
    assert int(seen) == frames
    by = {(r["metric"]["action"], r["metric"]["reason"]): float(r["value"][1]) for r in snapshot["decisions"]}
    assert by.get(("charge", "matched")) == 1, by
    assert sum(by.values()) == decisions, by
    # Lin's fare waited in the outbox, and the scrape saw its age grow.
    assert value("oldest") > 1
    assert value("wait") == decisions  # every decision has its wait, summed over actions
    assert value("smiles") >= 1  # the charge came after at least one smile
    assert value("gallery") == 2  # riders in the bus gallery: lin and the man
    assert value("disk") > 0
    assert value("camera") == 1
    assert value("fps") > 0
    models = snapshot["models"][0]["metric"]
    assert re.fullmatch(r"[0-9a-f]{64}", models["face_embedder_onnx"]), models
    # Nothing Prometheus stored names a rider: no label value is Lin's rider id.
    values = {v for r in snapshot["all"] for v in r["metric"].values()}
    assert len(snapshot["all"]) > 20 and "lin" not in values, values
