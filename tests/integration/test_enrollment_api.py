"""The enrollment HTTP API through FastAPI's TestClient: operator auth, OpenAPI, enroll, refuse, erase."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cloud_sync.protocol import generate_key
from enrollment.api import add_operator, check_operator, create_app
from enrollment.config import EnrollmentConfig
from enrollment.distribution import GalleryDistributor
from enrollment.enroll import Enroller
from enrollment.store import TemplateStore

AUTH = ("kiosk-7", "correct horse battery")


@pytest.fixture(scope="module")
def api(engine, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("api")
    store = TemplateStore.open(tmp / "store.db", tmp / "store.key")
    add_operator(store, *AUTH)
    enroller = Enroller(engine, store, EnrollmentConfig(upsample=0))
    dist = GalleryDistributor(store, generate_key(), enroller.model_sha256)
    dist.register_bus("bus-1")
    sent: list[tuple[str, bytes]] = []
    dist.publish = lambda topic, payload: sent.append((topic, payload))
    return TestClient(create_app(enroller, dist)), store, sent


def photo(faces_dir: Path, name: str) -> dict[str, str]:
    return {"name": name, "data": base64.b64encode((faces_dir / name).read_bytes()).decode()}


def test_openapi_is_served_and_describes_the_endpoints(api) -> None:
    client, _, _ = api
    spec = client.get("/openapi.json").json()
    assert spec["info"]["title"] == "FaceFare enrollment"
    assert {"/riders", "/riders/{rider_id}", "/riders/{rider_id}/erasure", "/photos/check"} <= set(spec["paths"])
    assert "HTTPBasic" in spec["components"]["securitySchemes"]
    assert client.get("/health").json() == {"status": "ok"}


def test_operator_authentication(api, faces_dir: Path) -> None:
    client, store, _ = api
    body = {"rider": {"rider_id": "x1"}, "photos": [photo(faces_dir, "obama_small.jpg")]}
    assert client.post("/riders", json=body).status_code == 401
    assert client.post("/riders", json=body, auth=("kiosk-7", "wrong password!")).status_code == 401
    assert client.get("/riders/x1", auth=("nobody", "correct horse battery")).status_code == 401
    assert check_operator(store, *AUTH) and not check_operator(store, "kiosk-7", "nope")
    row = store.db.execute("SELECT hash FROM operators WHERE name = 'kiosk-7'").fetchone()
    assert AUTH[1].encode() not in bytes(row[0])
    with pytest.raises(ValueError, match="10 characters"):
        add_operator(store, "weak", "short")


def test_enroll_duplicate_refuse_and_erase(api, faces_dir: Path) -> None:
    client, store, sent = api
    body = {"rider": {"rider_id": "obama", "display_name": "B. Obama", "concession": "adult", "account": "A-1"},
            "photos": [photo(faces_dir, "obama-480p.jpg"), photo(faces_dir, "obama_and_biden.jpg")]}  # fmt: skip
    res = client.post("/riders", json=body, auth=AUTH)
    assert res.status_code == 201, res.text
    out = res.json()
    assert out["status"] == "enrolled" and out["accepted"] == ["obama-480p.jpg"]
    assert out["refused"] == [{"photo": "obama_and_biden.jpg", "reason": "several_faces",
                               "message": "More than one face: the rider must be alone in the photo (2 found)"}]
    assert len(sent) == 1  # the new rider went out to bus-1

    dup = client.post("/riders", json={"rider": {"rider_id": "o2"}, "photos": [photo(faces_dir, "obama1.jpg")]},
                      auth=AUTH)  # fmt: skip
    assert dup.status_code == 409 and dup.json()["duplicate_of"] == "obama"

    bad = client.post("/riders", json={"rider": {"rider_id": "o3"}, "photos": [{"name": "x", "data": "AAAA"}]},
                      auth=AUTH)  # fmt: skip
    assert bad.status_code == 422 and bad.json()["refused"][0]["reason"] == "unreadable"
    assert client.post("/riders", json={"rider": {"rider_id": "bad id!"}, "photos": [photo(faces_dir, "obama1.jpg")]},
                       auth=AUTH).status_code == 422  # fmt: skip

    check = client.post("/photos/check", json=photo(faces_dir, "obama_partial_face.jpg"), auth=AUTH).json()
    assert check == {"ok": False, "reason": "outside_frame", "message": "Please step fully into view"}

    rider = client.get("/riders/obama", auth=AUTH).json()
    assert rider["templates"] == 1 and rider["account"] == "A-1" and "embedding" not in str(rider)

    erased = client.delete("/riders/obama", auth=AUTH)
    assert erased.status_code == 200 and erased.json()["templates_deleted"] == 1
    assert erased.json()["buses"] == [{"bus_id": "bus-1", "version": 2, "confirmed": False, "confirmed_at": None}]
    assert store.templates("obama") == [] and store.rider("obama")["display_name"] == ""
    assert client.get("/riders/obama/erasure", auth=AUTH).json()["buses"][0]["confirmed"] is False
    assert client.delete("/riders/obama", auth=AUTH).status_code == 404
    assert client.get("/riders/nobody", auth=AUTH).status_code == 404


def test_enroll_with_a_second_factor_code_never_echoes_it(api, faces_dir: Path) -> None:
    """Issue 16: the code goes in with the enrollment and comes out nowhere (not in the answer, not in the audit)."""
    client, store, _ = api
    body = {"rider": {"rider_id": "kit"}, "photos": [photo(faces_dir, "kit_harington1.jpeg")], "code": "12"}
    bad = client.post("/riders", json=body, auth=AUTH)
    assert bad.status_code == 422 and "4 to 8 digits" in bad.text and store.rider("kit") is None
    body["code"] = "80731"
    res = client.post("/riders", json=body, auth=AUTH)
    assert res.status_code == 201, res.text
    assert "80731" not in res.text and "lookalike_of" in res.json()
    assert store.code_digest("kit") is not None and "80731" not in str(store.audit_log("kit"))
