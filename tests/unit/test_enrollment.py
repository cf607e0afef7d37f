"""Enrollment from the shipped photos: reasons for refused photos, one person one account, re-embedding,
camera enrollment and the ``facefare enroll`` / ``facefare erase`` commands."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edge.faces.match import Gallery
from enrollment.config import EnrollmentConfig
from enrollment.enroll import Enroller
from enrollment.store import RiderRecord, TemplateStore

CFG = EnrollmentConfig()


def rider_folder(root: Path, faces_dir: Path, layout: dict[str, list[str]]) -> Path:
    for rider, files in layout.items():
        (root / rider).mkdir(parents=True)
        for f in files:
            shutil.copy(faces_dir / f, root / rider / f)
    return root


@pytest.fixture(scope="module")
def enrolled(engine, faces_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A store with obama (2 photos, 1 refused), biden, kit_harington; the results of enroll_folder."""
    tmp = tmp_path_factory.mktemp("enroll")
    folder = rider_folder(tmp / "photos", faces_dir, {
        "obama": ["obama.jpg", "obama_and_biden.jpg", "obama2.jpg"],
        "biden": ["biden.jpg"],
        "kit_harington": ["kit_harington1.jpeg"],
        "nobody": ["two_people.jpg"],
    })  # fmt: skip
    (folder / "obama" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (folder / "biden" / "rider.json").write_text('{"display_name": "Joe", "concession": "senior", "account": "A-2"}')
    store = TemplateStore.open(tmp / "store.db", tmp / "store.key", keep_photos=True)
    enroller = Enroller(engine, store, CFG)
    results = {r.rider_id: r for r in enroller.enroll_folder(folder, progress=False)}
    return enroller, results


def test_folder_enrollment_with_reasons(enrolled) -> None:
    enroller, results = enrolled
    assert {r: res.status for r, res in results.items()} == {
        "obama": "enrolled", "biden": "enrolled", "kit_harington": "enrolled", "nobody": "refused",
    }  # fmt: skip
    obama = results["obama"]
    assert obama.accepted == ["obama.jpg", "obama2.jpg"]
    assert {c.name: c.reason for c in obama.refused} == {"broken.jpg": "unreadable", "obama_and_biden.jpg":
                                                          "several_faces"}  # fmt: skip
    assert results["nobody"].refused[0].reason == "several_faces" and "0 usable" in results["nobody"].message
    biden = enroller.store.rider("biden")
    assert (biden["display_name"], biden["concession"], biden["account"]) == ("Joe", "senior", "A-2")
    assert len(enroller.store.templates("obama")) == 2
    assert {t.model_sha256 for t in enroller.store.templates()} == {enroller.engine.embedder_sha256}


def test_no_face_and_poor_quality_are_refused_with_reasons(enrolled, faces_dir: Path) -> None:
    enroller, _ = enrolled
    blank = np.full((400, 400, 3), 128, np.uint8)
    assert enroller.check_photo("blank", blank).reason == "no_face"
    partial = enroller.check_photo("partial", faces_dir / "obama_partial_face.jpg")
    assert (partial.ok, partial.reason) == (False, "outside_frame")
    assert partial.message == "Please step fully into view"
    dark = enroller.check_photo("dark", (np.asarray(enroller_image(faces_dir / "biden.jpg")) // 6).astype(np.uint8))
    assert (dark.ok, dark.reason) == (False, "too_dark")


def enroller_image(path: Path) -> np.ndarray:
    from edge.faces.images import load_image_file

    return load_image_file(path)


def test_enrolled_riders_are_recognised(enrolled, faces_dir: Path) -> None:
    enroller, _ = enrolled
    gallery: Gallery = enroller.store.gallery(enroller.model_sha256)
    for photo, who in [("obama-480p.jpg", "obama"), ("biden2.jpg", "biden"), ("kit_harington2.jpeg", "kit_harington")]:
        check = enroller.check_photo(photo, faces_dir / photo)
        match = gallery.match(check.embedding)
        assert match.rider_id == who and match.distance <= 0.5 and match.margin >= 0.1, (photo, match)


def test_one_person_one_account(enrolled, faces_dir: Path) -> None:
    enroller, _ = enrolled
    again = enroller.enroll(RiderRecord(rider_id="barack2"), [("o.jpg", faces_dir / "obama1.jpg")])
    assert again.status == "duplicate" and again.duplicate_of == "obama" and again.distance < 0.5
    assert enroller.store.rider("barack2") is None
    flagged = enroller.store.audit_log("barack2")
    assert [a["action"] for a in flagged] == ["duplicate_flagged"] and flagged[0]["detail"]["similar_to"] == "obama"
    mixed = enroller.enroll(RiderRecord(rider_id="rose"), [("r.jpg", faces_dir / "rose_leslie1.jpg"),
                                                          ("b.jpg", faces_dir / "biden2.jpg")])  # fmt: skip
    assert mixed.status == "enrolled" and mixed.accepted == ["r.jpg"]
    assert [c.reason for c in mixed.refused] == ["other_person"]
    forced = enroller.enroll(RiderRecord(rider_id="barack3"), [("o.jpg", faces_dir / "obama1.jpg")],
                             allow_duplicate=True)  # fmt: skip
    assert forced.status == "enrolled" and forced.duplicate_of == "obama"
    assert enroller.store.audit_log("barack3")[0]["detail"]["duplicate_override"] == "obama"


def test_reembed_migrates_templates_of_another_model(enrolled, faces_dir: Path) -> None:
    enroller, _ = enrolled
    store = enroller.store
    old = store.templates("kit_harington")[0].embedding
    store.replace_templates("kit_harington", [old + 0.01], model_sha256="0" * 64)  # as if made by an older model
    assert store.models()["0" * 64] == 1
    outcome = enroller.reembed(progress=False)
    assert outcome["kit_harington"] == "reembedded" and outcome["obama"] == "current"
    assert "0" * 64 not in store.models()
    np.testing.assert_allclose(store.templates("kit_harington")[0].embedding, old, atol=1e-5)


def test_camera_enrollment(engine, faces_dir: Path, tmp_path: Path) -> None:
    store = TemplateStore.open(tmp_path / "s.db", tmp_path / "s.key")
    enroller = Enroller(engine, store, EnrollmentConfig(upsample=0))
    frame = enroller_image(faces_dir / "obama-480p.jpg")
    frames = [np.zeros((480, 640, 3), np.uint8), frame, frame]  # an empty frame is passed over
    result = enroller.enroll_camera(RiderRecord(rider_id="cam-1"), frames, count=1, every=1)
    assert result.status == "enrolled" and result.accepted == ["frame-1"]
    assert store.photos("cam-1") == []  # no face image kept by default


def test_enroll_and_erase_commands(engine, models_dir: Path, faces_dir: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from cloud_sync.protocol import generate_key, save_private_key
    from facefare.cli import main

    monkeypatch.setenv("FACEFARE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FACEFARE_MODELS__DIR", str(models_dir))
    monkeypatch.setenv("FACEFARE_ENROLLMENT__UPSAMPLE", "0")
    monkeypatch.setenv("FACEFARE_MQTT__PORT", "1")  # no broker: erasure is recorded, publication waits
    monkeypatch.setenv("FACEFARE_MQTT__TLS", "false")
    monkeypatch.delenv("FACEFARE_CONFIG", raising=False)
    save_private_key(generate_key(), tmp_path / "home" / "cloud_key.pem")
    folder = rider_folder(tmp_path / "photos", faces_dir, {"lin": ["lin_manuel_miranda.png"], "nobody": []})
    runner = CliRunner()
    res = runner.invoke(main, ["enroll", str(folder), "--quiet"])
    assert res.exit_code == 1, res.output  # 'nobody' has no photo
    assert "lin" in res.output and "enrolled" in res.output and "0 usable photo(s)" in res.output
    res = runner.invoke(main, ["enrollment", "register-bus", "bus-1", "--out", str(tmp_path / "bus-1.key")])
    assert res.exit_code == 0, res.output
    assert oct((tmp_path / "bus-1.key").stat().st_mode & 0o777) == "0o600"
    res = runner.invoke(main, ["erase", "lin"])
    assert res.exit_code == 0, res.output
    assert "erased lin: 1 template(s) deleted" in res.output
    res = runner.invoke(main, ["erase", "status", "lin"])
    assert res.exit_code == 0 and "rider lin: erased" in res.output
    res = runner.invoke(main, ["erase", "status", "nobody-here"])
    assert res.exit_code == 1 and "no rider nobody-here" in res.output
    res = runner.invoke(main, ["enrollment", "audit", "lin"])
    assert "enroll" in res.output and "erase" in res.output
