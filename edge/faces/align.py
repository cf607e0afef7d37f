"""Face alignment without dlib: the upright, scaled face chip of ``dlib.get_face_chip``.

This is also the chip dlib's face embedder (``face_recognition_model_v1.compute_face_descriptor``,
hence ``face_recognition.face_encodings``) computes internally: 150 x 150 pixels, padding 0.25.

How dlib makes the chip, and so how we do (facts from dlib's ``image_transforms/interpolation.h``):

1. Landmarks -> chip placement. A least-squares similarity transform takes a canonical face
   (dlib's mean positions of the 5-point model's points, or of 33 of the 68 points: brows and lower
   lip left out), padded by ``padding`` on every side and scaled to ``size``, onto the detected
   landmarks. Its rotation gives the chip's angle, its scale and the mapped chip centre a
   (rotated) source rectangle of ``size * scale`` pixels a side.
2. Pyramid. When that rectangle holds many more pixels than the chip, dlib first halves a crop of
   the image (the rotated rectangle's bounding box, with a margin, clipped to the image) with its
   own 5x5 binomial pyramid (``pyramid_down<2>``: kernel 1-4-6-4-1, no border padding, sums
   truncated by ``// 256``, output ``(n - 3) // 2`` pixels, pixel ``i`` centred on input ``2i + 2``)
   until one more halving would leave no more source pixels than chip pixels. OpenCV's
   ``pyrDown`` centres, pads and rounds differently, so we rebuild dlib's pyramid from
   ``cv2.sepFilter2D`` (exact in float32 here) plus dlib's sub-sampling and truncation.
3. Sampling. Each chip pixel maps by an affine transform (chip corners -> rotated rectangle
   corners, in the pyramid level's coordinates) to the source and is bilinearly interpolated in
   float64; the result is truncated (not rounded) to uint8, and pixels whose 2x2 neighbourhood
   leaves the source are black. OpenCV's ``warpAffine`` quantises positions to 1/32 pixel (and,
   on uint8, rounds), which moves about one pixel in six by one grey level, so the default path
   does the bilinear step in numpy and is bit-exact; ``backend="cv2"`` samples with
   ``cv2.warpAffine`` on float32 instead (mean difference from dlib about 0.17 grey levels).
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import cv2
import numpy as np

log = logging.getLogger(__name__)

# dlib's canonical 5-point face (points 0..4 of shape_predictor_5_face_landmarks), unit square.
_MEAN_FACE_5 = np.array(
    [
        [0.8595674595992, 0.2134981538014],
        [0.6460604764104, 0.2289674387677],
        [0.1205750620789, 0.2137274526848],
        [0.3340850613712, 0.2290642403242],
        [0.4901123135679, 0.6277975316475],
    ],
    dtype=np.float64,
)

# dlib's mean positions of 68-point landmarks 17..67 (iBUG 300-W numbering), unit square.
_MEAN_FACE_68_X = (
    0.000213256, 0.0752622, 0.18113, 0.29077, 0.393397, 0.586856, 0.689483, 0.799124,
    0.904991, 0.98004, 0.490127, 0.490127, 0.490127, 0.490127, 0.36688, 0.426036,
    0.490127, 0.554217, 0.613373, 0.121737, 0.187122, 0.265825, 0.334606, 0.260918,
    0.182743, 0.645647, 0.714428, 0.793132, 0.858516, 0.79751, 0.719335, 0.254149,
    0.340985, 0.428858, 0.490127, 0.551395, 0.639268, 0.726104, 0.642159, 0.556721,
    0.490127, 0.423532, 0.338094, 0.290379, 0.428096, 0.490127, 0.552157, 0.689874,
    0.553364, 0.490127, 0.42689,
)  # fmt: skip
_MEAN_FACE_68_Y = (
    0.106454, 0.038915, 0.0187482, 0.0344891, 0.0773906, 0.0773906, 0.0344891,
    0.0187482, 0.038915, 0.106454, 0.203352, 0.307009, 0.409805, 0.515625, 0.587326,
    0.609345, 0.628106, 0.609345, 0.587326, 0.216423, 0.178758, 0.179852, 0.231733,
    0.245099, 0.244077, 0.231733, 0.179852, 0.178758, 0.216423, 0.244077, 0.245099,
    0.780233, 0.745405, 0.727388, 0.742578, 0.727388, 0.745405, 0.780233, 0.864805,
    0.902192, 0.909281, 0.902192, 0.864805, 0.784792, 0.778746, 0.785343, 0.778746,
    0.784792, 0.824182, 0.831803, 0.824182,
)  # fmt: skip
# Landmarks used for alignment with the 68-point model: 27..54 and 60..64 (no brows, no lower lip).
_USED_68 = np.array([i for i in range(17, 68) if not (i <= 26 or 55 <= i <= 59 or 65 <= i <= 67)], dtype=np.intp)
_MEAN_FACE_68 = np.stack([np.array(_MEAN_FACE_68_X), np.array(_MEAN_FACE_68_Y)], axis=1)[_USED_68 - 17]


# -- small geometry helpers (dlib's drectangle: inclusive, so width = right - left + 1) -------------


def _area(rect: tuple[float, float, float, float]) -> float:
    left, top, right, bottom = rect
    if top > bottom or left > right:
        return 0.0
    return (right - left + 1.0) * (bottom - top + 1.0)


def _half(rect: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """A rectangle's place one level down dlib's 2:1 pyramid (x/2 - 1.25, y/2 - 0.75)."""
    left, top, right, bottom = rect
    x0, y0, x1, y1 = left / 2.0 - 1.25, top / 2.0 - 0.75, right / 2.0 - 1.25, bottom / 2.0 - 0.75
    return (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def _rotate(center: tuple[float, float], x: float, y: float, cos_a: float, sin_a: float) -> tuple[float, float]:
    dx, dy = x - center[0], y - center[1]
    return (cos_a * dx - sin_a * dy + center[0], sin_a * dx + cos_a * dy + center[1])


def _round_half_away(v: float) -> int:
    return int(math.floor(v + 0.5)) if v >= 0 else -int(math.floor(-v + 0.5))


def _similarity(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares similarity ``dst ~ m @ src + t`` (closed form of Umeyama's method in 2-D)."""
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    s, d = src - src_mean, dst - dst_mean
    sigma = float((s * s).sum())
    if sigma == 0.0:
        m = np.eye(2)
    else:
        a = float((d[:, 0] * s[:, 0] + d[:, 1] * s[:, 1]).sum()) / sigma
        b = float((d[:, 1] * s[:, 0] - d[:, 0] * s[:, 1]).sum()) / sigma
        m = np.array([[a, -b], [b, a]])
    return m, dst_mean - m @ src_mean


# -- chip placement --------------------------------------------------------------------------------


def _chip_placement(landmarks: np.ndarray, size: int, padding: float) -> tuple[tuple[float, ...], float]:
    """The chip's source rectangle (left, top, right, bottom; before rotation) and its angle."""
    points = np.asarray(landmarks, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or points.shape[0] not in (5, 68):
        raise ValueError(f"expected 5 or 68 landmarks as an (N, 2) array, got shape {points.shape}")
    if size <= 0 or padding < 0:
        raise ValueError(f"need size > 0 and padding >= 0, got size={size}, padding={padding}")
    # dlib's Python bindings take padding as a C float; mirror that rounding.
    pad = float(np.float32(padding))
    if points.shape[0] == 5:
        template, target = _MEAN_FACE_5, points
    else:
        template, target = _MEAN_FACE_68, points[_USED_68]
    template = (pad + template) / (2 * pad + 1) * float(size)
    m, t = _similarity(template, target)
    angle = math.atan2(m[1, 0], m[0, 0])
    scale = math.hypot(m[0, 0], m[1, 0])
    center = m @ np.array([size / 2.0, size / 2.0]) + t
    half = (size * scale - 1.0) / 2.0
    rect = (center[0] - half, center[1] - half, center[0] + half, center[1] + half)
    return rect, angle


def face_chip_transform(landmarks: np.ndarray, size: int = 150, padding: float = 0.25) -> np.ndarray:
    """2x3 affine matrix taking chip pixel ``(x, y, 1)`` to source image coordinates.

    This is dlib's chip geometry without the pyramid (the inverse of dlib's
    ``get_mapping_to_chip``). To map image points into the chip use ``cv2.invertAffineTransform``.
    """
    rect, angle = _chip_placement(landmarks, size, padding)
    return _corner_affine(rect, angle, size, size)


def _corner_affine(rect: tuple[float, ...], angle: float, rows: int, cols: int) -> np.ndarray:
    """Affine map from chip corners (0,0), (cols-1,0), (0,rows-1) to the rotated rect's corners."""
    left, top, right, bottom = rect
    center = ((left + right) / 2.0, (top + bottom) / 2.0)
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    tl = np.array(_rotate(center, left, top, cos_a, sin_a))
    tr = np.array(_rotate(center, right, top, cos_a, sin_a))
    bl = np.array(_rotate(center, left, bottom, cos_a, sin_a))
    col_x = (tr - tl) / (cols - 1) if cols > 1 else np.zeros(2)
    col_y = (bl - tl) / (rows - 1) if rows > 1 else np.zeros(2)
    return np.column_stack([col_x, col_y, tl])


# -- dlib's pyramid and bilinear sampling ------------------------------------------------------------


_BINOMIAL_5 = np.array([1, 4, 6, 4, 1], dtype=np.float32)


def pyramid_down(img: np.ndarray) -> np.ndarray:
    """One level of dlib's ``pyramid_down<2>`` on a uint8 image (HxW or HxWxC).

    Output pixel (i, j) is ``floor(sum(w[a] * w[b] * img[2i + a, 2j + b]) / 256)`` with
    ``w = 1 4 6 4 1``; only windows wholly inside the image are used, so the border mode is moot.
    OpenCV does the filtering in float32, which is exact here: every partial sum is an integer
    below 2**16.
    """
    rows, cols = img.shape[:2]
    if rows <= 8 or cols <= 8:
        return np.zeros((0, 0) + img.shape[2:], dtype=np.uint8)
    out_rows, out_cols = (rows - 3) // 2, (cols - 3) // 2
    blurred = cv2.sepFilter2D(img.astype(np.float32), -1, _BINOMIAL_5, _BINOMIAL_5, borderType=cv2.BORDER_CONSTANT)
    sums = blurred[2 : 2 + 2 * out_rows : 2, 2 : 2 + 2 * out_cols : 2]
    return np.ascontiguousarray((sums * (1.0 / 256)).astype(np.uint8))  # exact scaling, then truncation


def _bilinear_exact(src: np.ndarray, affine: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """dlib's bilinear sampling: float64 weights, truncation to uint8, black outside."""
    height, width = src.shape[:2]
    channels = src.shape[2] if src.ndim == 3 else 1
    out = np.zeros((rows * cols, channels), dtype=np.uint8)
    if height < 2 or width < 2:
        return out.reshape((rows, cols) + src.shape[2:])
    c = np.tile(np.arange(cols, dtype=np.float64), rows)
    r = np.repeat(np.arange(rows, dtype=np.float64), cols)
    x = affine[0, 0] * c + affine[0, 1] * r + affine[0, 2]
    y = affine[1, 0] * c + affine[1, 1] * r + affine[1, 2]
    left, top = np.floor(x), np.floor(y)
    ok = (left >= 0) & (top >= 0) & (left + 1 < width) & (top + 1 < height)
    if not ok.all():
        x, y, left, top = x[ok], y[ok], left[ok], top[ok]
    fx, fy = (x - left)[:, None], (y - top)[:, None]
    flat = src.reshape(height * width, channels)
    base = top.astype(np.intp) * width + left.astype(np.intp)
    gx = 1 - fx
    # (1-fy) * ((1-fx)*tl + fx*tr) + fy * ((1-fx)*bl + fx*br), in dlib's order, in place.
    top_row = flat.take(base, axis=0) * gx
    top_row += flat.take(base + 1, axis=0) * fx
    top_row *= 1 - fy
    bottom_row = flat.take(base + width, axis=0) * gx
    bottom_row += flat.take(base + width + 1, axis=0) * fx
    bottom_row *= fy
    top_row += bottom_row
    out[ok] = top_row.astype(np.uint8)  # C++ static_cast: truncation toward zero
    return out.reshape((rows, cols) + src.shape[2:])


def _bilinear_cv2(src: np.ndarray, affine: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """OpenCV's bilinear warp with dlib's black border (pixels needing outside neighbours are 0)."""
    if src.shape[0] < 2 or src.shape[1] < 2:
        return np.zeros((rows, cols) + src.shape[2:], dtype=np.uint8)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    # Warp in float32 and truncate like dlib; OpenCV still quantises positions to 1/32 pixel.
    warped = cv2.warpAffine(
        src.astype(np.float32), affine, (cols, rows), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    out = np.floor(warped).clip(0, 255).astype(np.uint8)
    c, r = np.meshgrid(np.arange(cols, dtype=np.float64), np.arange(rows, dtype=np.float64))
    x = affine[0, 0] * c + affine[0, 1] * r + affine[0, 2]
    y = affine[1, 0] * c + affine[1, 1] * r + affine[1, 2]
    ok = (x >= 0) & (y >= 0) & (np.floor(x) + 1 < src.shape[1]) & (np.floor(y) + 1 < src.shape[0])
    out[~ok] = 0
    return out


# -- public API ------------------------------------------------------------------------------------


def face_chip(
    rgb: np.ndarray,
    landmarks: np.ndarray,
    size: int = 150,
    padding: float = 0.25,
    *,
    backend: Literal["exact", "cv2"] = "exact",
) -> np.ndarray:
    """The aligned ``size`` x ``size`` face chip, as ``dlib.get_face_chip(img, shape, size, padding)``.

    ``landmarks`` are the (5, 2) or (68, 2) (x, y) points of :class:`edge.faces.landmarks.ShapePredictor`
    (dlib's whole-pixel points give dlib's chip). ``backend="exact"`` reproduces dlib's pixels;
    ``"cv2"`` samples with ``cv2.warpAffine`` (same geometry, values may differ by a grey level).
    """
    image = np.asarray(rgb)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"expected an HxWx3 (or HxW) uint8 image, got {image.dtype} {image.shape}")
    if backend not in ("exact", "cv2"):
        raise ValueError(f"unknown backend {backend!r}; use 'exact' or 'cv2'")
    rect, angle = _chip_placement(landmarks, size, padding)
    rows = cols = int(size)
    height, width = image.shape[:2]

    if angle == 0 and rows == rect[3] - rect[1] + 1 and cols == rect[2] - rect[0] + 1:
        return _plain_crop(image, rect, rows, cols)

    # How many pyramid levels: halve while the next level still has more pixels than the chip.
    depth, grow = 0, 2.0
    probe = _half(rect)
    while _area(probe) > rows * cols:
        probe = _half(probe)
        depth += 1
        grow = grow * 2 + 2

    # The crop that feeds the pyramid: rotated rect's bounding box, grown, clipped, rounded.
    center = ((rect[0] + rect[2]) / 2.0, (rect[1] + rect[3]) / 2.0)
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    corners = [_rotate(center, x, y, cos_a, sin_a) for x in (rect[0], rect[2]) for y in (rect[1], rect[3])]
    xs, ys = [p[0] for p in corners], [p[1] for p in corners]
    box = (
        max(min(xs) - grow, 0.0), max(min(ys) - grow, 0.0),
        min(max(xs) + grow, width - 1.0), min(max(ys) + grow, height - 1.0),
    )  # fmt: skip
    left, top, right, bottom = (_round_half_away(v) for v in box)
    if box[0] > box[2] or box[1] > box[3] or left > right or top > bottom:
        log.debug("face chip lies entirely outside the %dx%d image", width, height)
        return np.zeros((rows, cols) + image.shape[2:], dtype=np.uint8)
    source = image[top : bottom + 1, left : right + 1]

    local = (rect[0] - left, rect[1] - top, rect[2] - left, rect[3] - top)
    levels = 0
    while _area(_half(local)) > rows * cols:
        local = _half(local)
        levels += 1
    for _ in range(levels):
        source = pyramid_down(source)
    if levels != depth:  # dlib decides the margin with one count and samples with the other
        log.debug("pyramid depth %d differs from sampling depth %d", depth, levels)

    affine = _corner_affine(local, angle, rows, cols)
    sampler = _bilinear_exact if backend == "exact" else _bilinear_cv2
    return sampler(np.ascontiguousarray(source), affine, rows, cols)


def _plain_crop(image: np.ndarray, rect: tuple[float, ...], rows: int, cols: int) -> np.ndarray:
    """dlib's shortcut for an unrotated, unscaled chip: a copy of the rectangle, black outside."""
    left, top = _round_half_away(rect[0]), _round_half_away(rect[1])
    out = np.zeros((rows, cols) + image.shape[2:], dtype=np.uint8)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + rows, image.shape[0]), min(left + cols, image.shape[1])
    if y0 < y1 and x0 < x1:
        out[y0 - top : y1 - top, x0 - left : x1 - left] = image[y0:y1, x0:x1]
    return out
