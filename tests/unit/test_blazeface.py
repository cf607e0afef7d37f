"""BlazeFace boxes, Face Mesh and blendshapes through the public face API, on the demo photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge import faces
from edge.faces import blazeface
from edge.faces.geometry import Rect, iou
from edge.faces.mesh import BLENDSHAPE_NAMES

PHOTOS = ("obama.jpg", "obama2.jpg", "biden.jpg", "biden2.jpg", "kit_harington1.jpeg", "rose_leslie1.jpg",
          "alex_lacamoire1.jpg", "two_people.jpg", "obama_and_biden.jpg", "kit_with_rose.jpg")  # fmt: skip
BUS_THRESHOLD = 0.5  # [pipeline] match_threshold


def test_anchors_and_letterbox() -> None:
    assert blazeface.make_anchors(blazeface.SHORT).shape == (896, 2)
    assert blazeface.make_anchors(blazeface.FULL).shape == (2304, 2)
    m = blazeface.letterbox_matrix(640, 360, 128)
    assert np.allclose(m @ [0, 0, 1], [0, 28]) and np.allclose(m @ [640, 360, 1], [128, 100])


def test_weighted_nms_blends_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], float)
    points = np.zeros((3, 6, 2))
    out = blazeface.weighted_nms(boxes, points, np.array([0.9, 0.9, 0.8]), 0.3)
    assert len(out) == 2 and np.allclose(out[0][0], [0.5, 0, 10.5, 10]) and out[1][2] == 0.8


@pytest.fixture(scope="module")
def pairs(engine, faces_dir: Path) -> list[tuple[np.ndarray, tuple, tuple]]:
    """(image, HOG box, BlazeFace box) for every face both find."""
    out = []
    for name in PHOTOS:
        img = faces.load_image_file(faces_dir / name)
        hog = faces.face_locations(img, 1, "hog")
        for box in faces.face_locations(img, model="blazeface"):
            best = max(hog, key=lambda h: iou(Rect.from_css(h), Rect.from_css(box)), default=None)
            if best is not None and iou(Rect.from_css(best), Rect.from_css(box)) > 0.4:
                out.append((img, best, box))
    return out


def test_blazeface_finds_the_hog_faces(pairs) -> None:
    assert len(pairs) >= 10


def test_encodings_on_blazeface_boxes_match_hog_boxes(pairs, faces_dir: Path) -> None:
    known = {n: faces.face_encodings(faces.load_image_file(faces_dir / f))[0]
             for n, f in (("obama", "obama.jpg"), ("biden", "biden.jpg"), ("kit", "kit_harington1.jpeg"))}  # fmt: skip
    dists = []
    for img, hog, bf in pairs:
        a, b = faces.face_encodings(img, [hog, bf])
        dists.append(float(np.linalg.norm(a - b)))
        gallery = np.stack(list(known.values()))
        assert faces.compare_faces(gallery, a, BUS_THRESHOLD) == faces.compare_faces(gallery, b, BUS_THRESHOLD)
    assert float(np.mean(dists)) <= 0.05, dists


def test_blendshapes_api(engine, faces_dir: Path) -> None:
    img = faces.load_image_file(faces_dir / "two_people.jpg")
    boxes = faces.face_locations(img, model="blazeface")
    scores = faces.face_blendshapes(img, boxes)
    assert len(scores) == len(boxes) == 2
    for s in scores:
        assert list(s) == list(BLENDSHAPE_NAMES) and all(0.0 <= v <= 1.0 for v in s.values())
    mesh = faces.face_landmarks(img, boxes, model="mesh")
    assert len(mesh[0]["mesh"]) == 478
    assert faces.face_blendshapes(np.zeros((120, 160, 3), np.uint8)) == []


def test_smile_rises_over_own_neutral(engine) -> None:
    london = Path(__file__).resolve().parents[2] / "facefare" / "demo" / "data" / "london"
    if not london.is_dir():
        pytest.skip("no London photos shipped")
    rises = []
    for neutral in sorted(london.glob("*_neutral.jpg")):
        n = faces.face_blendshapes(faces.load_image_file(neutral))[0]
        s = faces.face_blendshapes(faces.load_image_file(str(neutral).replace("neutral", "smiling")))[0]
        rises.append((s["mouthSmileLeft"] + s["mouthSmileRight"] - n["mouthSmileLeft"] - n["mouthSmileRight"]) / 2)
    # 36 of the 40 smile clearly (rise 0.1-0.9); 4 "smiling" photos are faint, closed-mouth smiles
    # (005, 024, 037, 042: rise < 0.1) that the gate must not take for consent either.
    assert sum(r > 0.1 for r in rises) >= 35, rises
    assert float(np.median(rises)) > 0.45


def test_full_range_detector_finds_the_smaller_faces(engine, faces_dir: Path) -> None:
    img = faces.load_image_file(faces_dir / "obama_and_biden.jpg")  # 3 faces of ~150-230 px in 2000 px
    assert len(faces.face_locations(img, model="blazeface_full")) >= 2
    assert len(faces.face_locations(img, model="blazeface")) < 2  # the short-range model is for a door
