"""The numpy HOG face detector (edge.faces.hog) against dlib's own frontal face detector."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.faces.geometry import Rect, iou
from edge.faces.hog import HogDetector, fhog, pyramid_up, resize_rgb
from models.artifacts import save_npz, sha256_file
from models.hog import detector_arrays, fhog_window_size
from tests.helpers import FIXTURES, reference

FACES = FIXTURES
PHOTOS = sorted(p for p in FACES.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})


def load_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, path
    return np.ascontiguousarray(bgr[:, :, ::-1])


@pytest.fixture(scope="session")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reference("dlib")
    from models.hog import convert_hog

    out = tmp_path_factory.mktemp("hog") / "hog.npz"
    convert_hog(out)
    return out


@pytest.fixture(scope="session")
def detector(converted: Path) -> HogDetector:
    return HogDetector(converted)


# -- without dlib -----------------------------------------------------------------------------


def synthetic_detector(tmp_path: Path, threshold: float = 1.0) -> HogDetector:
    """A detector with dlib's geometry but all-zero filters: every window scores 0."""
    rows, cols = fhog_window_size(80, 80, 8, 0)
    parsed = {
        "cell_size": 8,
        "padding": 0,
        "window_width": 80,
        "window_height": 80,
        "max_pyramid_levels": 1000,
        "min_pyramid_layer_width": 64,
        "min_pyramid_layer_height": 64,
        "fhog_rows": rows,
        "fhog_cols": cols,
        "iou_thresh": 0.33,
        "percent_covered_thresh": 0.79,
        "weights": [np.r_[np.zeros(rows * cols * 31), threshold] for _ in range(2)],
    }
    path = tmp_path / "synthetic.npz"
    save_npz(path, detector_arrays(parsed))
    return HogDetector(path)


def test_window_size_matches_dlib_geometry() -> None:
    assert fhog_window_size(80, 80, 8, 0) == (10, 10)
    assert fhog_window_size(64, 64, 8, 1) == (10, 10)


def test_no_face_gives_empty_list(tmp_path: Path) -> None:
    det = synthetic_detector(tmp_path)
    rng = np.random.default_rng(0)
    assert det.detect(np.zeros((120, 160, 3), dtype=np.uint8)) == []
    assert det.detect(rng.integers(0, 256, (97, 131, 3), dtype=np.uint8), upsample=1) == []
    assert det.detect(np.zeros((5, 5, 3), dtype=np.uint8)) == []


def test_adjust_threshold_lets_every_window_through(tmp_path: Path) -> None:
    det = synthetic_detector(tmp_path, threshold=1.0)
    found = det.detect(np.full((100, 100, 3), 128, dtype=np.uint8), adjust_threshold=-1.0)
    assert found and all(d.score == pytest.approx(-1.0) for d in found)


def test_fhog_layout() -> None:
    img = np.random.default_rng(1).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    feats = fhog([np.ascontiguousarray(img[:, :, c]) for c in range(3)], 8, 10, 10)
    assert feats.shape == (31, 6 + 9, 10 + 9)  # (cells - 2) plus the filter padding
    assert feats.dtype == np.float32
    assert not feats[:, :4].any() and not feats[:, -5:].any()  # zero border
    assert feats[:, 4:10, 4:14].any()
    assert (feats[:27] <= 0.4 + 1e-6).all()  # truncation at 0.2, summed over 4 blocks * 0.5


def test_pyramid_up_size() -> None:
    up = pyramid_up([np.zeros((10, 20), dtype=np.uint8)] * 3)
    assert up[0].shape == (21, 42)  # rect_up of the 20x10 image ends at (41, 20)


def test_conversion_is_reproducible(tmp_path: Path) -> None:
    reference("dlib")
    from models.hog import convert_hog

    meta = convert_hog(tmp_path / "a.npz")
    convert_hog(tmp_path / "b.npz")
    assert sha256_file(tmp_path / "a.npz") == sha256_file(tmp_path / "b.npz")
    assert meta["filter_0"] == [10, 10, 31]
    assert meta["num_components"] == 5


# -- against dlib -----------------------------------------------------------------------------


@pytest.mark.reference
def test_resize_matches_dlib_pyramid_down() -> None:
    dlib = reference("dlib")
    pyr = dlib.pyramid_down(6)
    for path in PHOTOS[:6]:
        img = load_rgb(path)
        for _ in range(3):
            ref = pyr(img)
            h, w = img.shape[:2]
            np.testing.assert_array_equal(resize_rgb(img, 5 * h // 6, 5 * w // 6), ref)
            img = ref


@pytest.mark.reference
def test_blank_image_no_face(detector: HogDetector) -> None:
    assert detector.detect(np.zeros((200, 300, 3), dtype=np.uint8)) == []
    assert detector.detect(np.full((64, 64, 3), 200, dtype=np.uint8), upsample=1) == []


@pytest.mark.reference
@pytest.mark.parametrize("upsample", [0, 1])
def test_boxes_match_dlib(detector: HogDetector, upsample: int) -> None:
    dlib = reference("dlib")
    dlib_detector = dlib.get_frontal_face_detector()
    worst = 1.0
    problems = []
    for path in PHOTOS:
        img = load_rgb(path)
        rects, scores, _ = dlib_detector.run(img, upsample, 0.0)
        expected = [Rect(r.left(), r.top(), r.right(), r.bottom()) for r in rects]
        found = detector.detect(img, upsample=upsample)
        if len(found) != len(expected):
            problems.append(f"{path.name}: dlib found {len(expected)} faces, edge.faces.hog {len(found)}")
            continue
        for want, score in zip(expected, scores, strict=True):
            best = max(found, key=lambda d, want=want: iou(want, d.rect))
            overlap = iou(want, best.rect)
            worst = min(worst, overlap)
            if overlap < 0.9:
                problems.append(f"{path.name}: box {want} best match {best.rect} IoU {overlap:.3f}")
            elif abs(best.score - score) > 1e-3:
                problems.append(f"{path.name}: score {best.score:.5f} vs dlib {score:.5f}")
    print(f"upsample={upsample}: worst IoU against dlib over {len(PHOTOS)} photos: {worst:.4f}")
    assert not problems, "\n".join(problems)
