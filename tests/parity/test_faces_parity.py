"""edge.faces gives face_recognition's answers: same signatures, boxes, landmarks and encodings."""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest

from edge import faces
from edge.faces.geometry import Rect, iou
from tests.helpers import FIXTURES, fixture_identities, reference

pytestmark = pytest.mark.reference

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    fr = reference("face_recognition")

PHOTOS = sorted(f for f in fixture_identities() if not f.endswith(".mp4") and (FIXTURES / f).exists())
API = ["load_image_file", "face_locations", "batch_face_locations", "face_landmarks", "face_encodings",
       "face_distance", "compare_faces"]


def _upsample_for(img: np.ndarray) -> int:
    return 1 if img.shape[0] * img.shape[1] <= 1_000_000 else 0


@pytest.fixture(scope="module")
def reference(engine) -> dict[str, tuple[np.ndarray, list, list]]:
    """Per photo: image, face_recognition's HOG boxes and its encodings at those boxes."""
    out = {}
    for name in PHOTOS:
        img = faces.load_image_file(FIXTURES / name)
        boxes = fr.face_locations(img, _upsample_for(img), "hog")
        out[name] = (img, boxes, fr.face_encodings(img, boxes))
    return out


@pytest.mark.parametrize("name", API)
def test_same_signature(name: str) -> None:
    ours = inspect.signature(getattr(faces, name))
    theirs = inspect.signature(getattr(fr, name))
    assert [(p.name, p.default) for p in ours.parameters.values()] == [
        (p.name, p.default) for p in theirs.parameters.values()
    ]


def test_images_load_the_same() -> None:
    for name in PHOTOS:
        assert np.array_equal(faces.load_image_file(FIXTURES / name), fr.load_image_file(FIXTURES / name)), name


def test_hog_boxes_match(reference) -> None:
    worst = 1.0
    for name, (img, ref_boxes, _) in reference.items():
        ours = faces.face_locations(img, _upsample_for(img), "hog")
        assert len(ours) == len(ref_boxes), name
        for box in ref_boxes:
            best = max(iou(Rect.from_css(box), Rect.from_css(o)) for o in ours)
            worst = min(worst, best)
    print(f"\nworst HOG box IoU against face_recognition: {worst:.4f}")
    assert worst >= 0.9


def test_encodings_match(reference) -> None:
    worst, count = 0.0, 0
    for name, (img, boxes, ref_codes) in reference.items():
        ours = faces.face_encodings(img, boxes)
        assert len(ours) == len(ref_codes), name
        for a, b in zip(ours, ref_codes, strict=True):
            assert a.shape == (128,) and a.dtype == np.float64
            worst = max(worst, float(np.linalg.norm(a - b)))
            count += 1
    print(f"\nworst encoding distance to face_recognition over {count} faces: {worst:.6f}")
    assert count >= 20
    assert worst <= 0.01


def test_landmark_dicts_match(reference) -> None:
    worst = 0.0
    for _name, (img, boxes, _) in reference.items():
        for model in ("large", "small"):
            ours, theirs = faces.face_landmarks(img, boxes, model), fr.face_landmarks(img, boxes, model)
            assert [sorted(d) for d in ours] == [sorted(d) for d in theirs]
            for a, b in zip(ours, theirs, strict=True):
                for key in a:
                    diff = np.abs(np.array(a[key], float) - np.array(b[key], float)).sum(axis=1)
                    worst = max(worst, float(diff.mean()))
    print(f"\nworst mean landmark L1 difference (integer points): {worst:.3f} px")
    assert worst <= 1.0


def test_distance_and_compare_match() -> None:
    rng = np.random.default_rng(1)
    known = [rng.normal(size=128) * 0.05 for _ in range(5)]
    probe = known[2] + 0.01
    assert np.allclose(faces.face_distance(known, probe), fr.face_distance(known, probe))
    assert faces.compare_faces(known, probe) == fr.compare_faces(known, probe)
    assert faces.face_distance([], probe).shape == fr.face_distance([], probe).shape == (0,)


def test_end_to_end_identities(reference) -> None:
    """Enroll one photo per person; every other single-person photo is named correctly."""
    ids = fixture_identities()
    enroll = {"obama": "obama.jpg", "biden": "biden.jpg", "kit_harington": "kit_harington1.jpeg",
              "rose_leslie": "rose_leslie1.jpg", "alex_lacamoire": "alex_lacamoire2.jpg"}
    known = {who: faces.face_encodings(reference[f][0])[0] for who, f in enroll.items()}
    names, codes = list(known), list(known.values())
    for name, (img, _, _) in reference.items():
        if name in enroll.values() or ids[name] not in known:
            continue
        for code in faces.face_encodings(img):
            assert names[int(np.argmin(faces.face_distance(codes, code)))] == ids[name], name
