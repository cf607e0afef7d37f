"""The enrollment API's /metrics (what 'facefare enrollment serve' mounts): enrollments, duplicates
flagged and erasures pending per bus, counted from the real store after real API calls; no rider named."""

from __future__ import annotations

import base64
from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from cloud_sync.protocol import generate_key
from enrollment.api import add_operator, create_app
from enrollment.config import EnrollmentConfig
from enrollment.distribution import GalleryDistributor
from enrollment.enroll import Enroller
from enrollment.store import TemplateStore
from facefare.metrics import mount_enrollment_metrics

AUTH = ("kiosk-7", "correct horse battery")


def photo(faces_dir: Path, name: str) -> dict[str, str]:
    return {"name": name, "data": base64.b64encode((faces_dir / name).read_bytes()).decode()}


def test_enrollment_metrics_follow_the_store(engine, faces_dir: Path, tmp_path: Path) -> None:
    store = TemplateStore.open(tmp_path / "store.db", tmp_path / "store.key")
    add_operator(store, *AUTH)
    enroller = Enroller(engine, store, EnrollmentConfig(upsample=0))
    dist = GalleryDistributor(store, generate_key(), enroller.model_sha256)
    for bus in ("bus-1", "bus-2"):
        dist.register_bus(bus)
    dist.publish = lambda topic, payload: None  # no broker in this test: deltas are built and dropped
    app = create_app(enroller, dist)
    mount_enrollment_metrics(app, store)
    client = TestClient(app)

    def metrics() -> dict:
        res = client.get("/metrics/")
        assert res.status_code == 200
        assert "obama" not in res.text.lower()  # no rider named
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(res.text) for s in f.samples}  # fmt: skip

    assert metrics()[("facefare_enrollment_enrollments_total", ())] == 0
    body = {"rider": {"rider_id": "obama"}, "photos": [photo(faces_dir, "obama-480p.jpg")]}
    assert client.post("/riders", json=body, auth=AUTH).status_code == 201
    dup = {"rider": {"rider_id": "o2"}, "photos": [photo(faces_dir, "obama1.jpg")]}
    assert client.post("/riders", json=dup, auth=AUTH).status_code == 409
    assert client.delete("/riders/obama", auth=AUTH).status_code == 200
    m = metrics()
    assert m[("facefare_enrollment_enrollments_total", ())] == 1
    assert m[("facefare_enrollment_duplicates_flagged_total", ())] == 1
    assert m[("facefare_enrollment_erasures_total", ())] == 1
    assert m[("facefare_enrollment_erasures_pending", (("bus", "bus-1"),))] == 1
    assert m[("facefare_enrollment_erasures_pending", (("bus", "bus-2"),))] == 1
    store.close()
