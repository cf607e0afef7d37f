"""dlib's CNN (MMOD) face detector without dlib: the network runs in onnxruntime, the rest is here.

What this module reproduces (from dlib's ``dnn/input.h``, ``image_transforms/image_pyramid.h``,
``dnn/loss.h`` and the Python binding ``cnn_face_detector.cpp``):

* optional up-sampling by ``pyramid_up`` (2x, bilinear, 8-bit result truncated), as the binding does;
* the input tensor: the image normalised to ``(pixel - mean) / 256`` and a ``pyramid_down<6>``
  pyramid (each level 5/6 of the previous, down to 5 rows) tiled into one plane: a first column
  of levels stacked top to bottom, then the small levels going back up along the right edge,
  ``pyramid_padding`` between tiles and ``pyramid_outer_padding`` around; gaps are 0 (the mean
  colour). Each level is resampled from the previous one with dlib's bilinear ``resize_image``,
  whose float32 arithmetic is reproduced step by step;
* decoding: every score above the threshold becomes a detector window (80x80) centred on the
  cell's receptive-field centre in the tensor, mapped back into the image through the tile it
  falls in, rounded to integers, sorted by score and thinned by dlib's non-max suppression
  (which divides the intersection by the area of the two boxes' bounding box, not their union).

Checked against dlib 20: the same boxes to the pixel and scores within 2e-6 on the fixture photos
(upsample 0 and 1, batches, grayscale); the resampling is bit-identical to ``dlib.resize_image``.
Known gap: in images at most 54 pixels wide dlib's layout lets consecutive pyramid tiles overlap
and dlib then resamples a level partly from pixels it is overwriting; that in-place effect is not
reproduced (no face fits in such an image anyway). Images dlib refuses (narrower than 10 pixels,
or too small for the network) give no faces here instead of an error.

Nothing is loaded at import time; the ONNX session is created on first use.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge.faces.geometry import Detection, Rect

log = logging.getLogger(__name__)

#: dlib stops the pyramid when a level would be shorter than this many rows.
MIN_PYRAMID_HEIGHT = 5

_F32 = np.float32
_U64 = 1 << 64

# -- small numeric helpers that follow C++ semantics ------------------------------------------


def _lround(x: np.ndarray | float) -> np.ndarray:
    """``std::lround``: nearest integer, halves away from zero."""
    x = np.asarray(x, dtype=np.float64)
    return (np.sign(x) * np.floor(np.abs(x) + 0.5)).astype(np.int64)


def _round_half_up(x: np.ndarray) -> np.ndarray:
    """How dlib turns a ``dpoint`` into a ``point``: ``floor(v + 0.5)``."""
    return np.floor(np.asarray(x, dtype=np.float64) + 0.5).astype(np.int64)


# -- dlib's bilinear resize_image, float32 for tensors and uint8 for RGB images ----------------------


def _resize_bilinear(src: np.ndarray, out_h: int, out_w: int, to_uint8: bool) -> np.ndarray:
    """Resample ``src`` (C, H, W) to (C, out_h, out_w) as dlib's bilinear ``resize_image``.

    Corners map to corners (scale ``(in - 1) / (out - 1)``). dlib processes columns four at a
    time in float32 (positions accumulated in float32, truncated to the left neighbour) and
    finishes the last few columns in a scalar loop; both paths are reproduced so that results
    agree to the last bit where that matters (8-bit output is truncated, not rounded).
    ``to_uint8`` selects the RGB-image variant (uint8 result), else the float-tensor variant.
    """
    chans, in_h, in_w = src.shape
    src = src.astype(_F32, copy=False)
    x_scale = (in_w - 1) / max(out_w - 1, 1)
    y_scale = (in_h - 1) / max(out_h - 1, 1)

    # Rows: y accumulated in double, one addition per row.
    y = np.cumsum(np.concatenate(([-y_scale], np.full(out_h, y_scale))))[1:]
    top = np.floor(y).astype(np.int64)
    bottom = np.minimum(top + 1, in_h - 1)
    tb = y - top

    # Columns, vector part: 4 lanes of float32 positions, each advanced by 4 * x_scale per step.
    groups = out_w // 4 + 2
    x0 = -4 * x_scale
    lanes = np.empty((groups + 1, 4), dtype=_F32)
    lanes[0] = np.array([x0, x0 + x_scale, x0 + 2 * x_scale, x0 + 3 * x_scale], dtype=np.float64).astype(_F32)
    lanes[1:] = _F32(4 * x_scale)
    xs_vec = np.cumsum(lanes, axis=0, dtype=_F32)[1:]
    left_vec = xs_vec.astype(np.int32)  # truncation, as _mm_cvttps_epi32
    stop = left_vec[:, 3] + 1 >= in_w
    n_vec = 4 * int(np.argmax(stop))
    n_vec = min(n_vec, out_w)
    xs_vec = xs_vec.reshape(-1)[:n_vec]
    left_v = left_vec.reshape(-1)[:n_vec].astype(np.int64)
    lr_v = xs_vec - left_v.astype(_F32)
    inv_lr_v = _F32(1) - lr_v
    tb_f = tb.astype(_F32)[:, None]
    inv_tb_f = (1.0 - tb).astype(_F32)[:, None]

    out = np.empty((chans, out_h, out_w), dtype=np.uint8 if to_uint8 else _F32)
    if n_vec:
        rows_t, rows_b = src[:, top], src[:, bottom]
        val = np.take(rows_t, left_v, axis=2)
        val *= inv_tb_f * inv_lr_v
        for rows, cols, weight in ((rows_t, left_v + 1, inv_tb_f * lr_v), (rows_b, left_v, tb_f * inv_lr_v)):
            term = np.take(rows, cols, axis=2)
            term *= weight
            val += term
        term = np.take(rows_b, left_v + 1, axis=2)
        term *= tb_f * lr_v
        val += term
        out[:, :, :n_vec] = np.clip(np.trunc(val), 0, 255).astype(np.uint8) if to_uint8 else val

    # Columns, scalar tail: x restarts from n_vec * x_scale and accumulates in double.
    n_tail = out_w - n_vec
    if n_tail:
        xt = np.cumsum(np.concatenate(([-x_scale + n_vec * x_scale], np.full(n_tail, x_scale))))[1:]
        left_t = np.floor(xt).astype(np.int64)
        right_t = np.minimum(left_t + 1, in_w - 1)
        tl, tr = (src[:, top[:, None], cols[None, :]].astype(np.float64) for cols in (left_t, right_t))
        bl, br = (src[:, bottom[:, None], cols[None, :]].astype(np.float64) for cols in (left_t, right_t))
        tbd = tb[:, None]
        if to_uint8:
            lr = xt - left_t
            val = (1 - tbd) * ((1 - lr) * tl + lr * tr) + tbd * ((1 - lr) * bl + lr * br)
            out[:, :, n_vec:] = np.clip(np.trunc(val), 0, 255).astype(np.uint8)
        else:
            lr32 = (xt - left_t).astype(_F32)
            one_minus = _F32(1) - lr32
            upper = (one_minus * tl.astype(_F32) + lr32 * tr.astype(_F32)).astype(np.float64)
            lower = (one_minus * bl.astype(_F32) + lr32 * br.astype(_F32)).astype(np.float64)
            out[:, :, n_vec:] = ((1 - tbd) * upper + tbd * lower).astype(_F32)
    return out


def pyramid_up(rgb: np.ndarray) -> np.ndarray:
    """dlib's ``pyramid_up`` with ``pyramid_down<2>``: about 2x larger, bilinear, uint8 (HxWx3)."""
    h, w = rgb.shape[:2]
    if h * w == 0:
        return np.zeros((0, 0, 3), np.uint8)
    # The output size is the image rectangle mapped up by pyramid_down<2>::point_up, rounded.
    out_w = int(_lround((w - 1 + 1.25) * 2)) + 1
    out_h = int(_lround((h - 1 + 0.75) * 2)) + 1
    planes = np.ascontiguousarray(rgb.transpose(2, 0, 1))
    return np.ascontiguousarray(_resize_bilinear(planes, out_h, out_w, to_uint8=True).transpose(1, 2, 0))


def _rect_down_2(boxes: np.ndarray, levels: int) -> np.ndarray:
    """Map (n, 4) boxes [l, t, r, b] from an image up-sampled ``levels`` times back (float)."""
    out = boxes.astype(np.float64)
    for _ in range(levels):
        out = out / 2.0 - np.array([1.25, 0.75, 1.25, 0.75])
    return out


# -- the tiled pyramid -----------------------------------------------------------------------------


def pyramid_level_sizes(height: int, width: int, pyramid_down: int = 6) -> list[tuple[int, int]]:
    """(rows, cols) of each ``pyramid_down<N>`` level, starting with the image itself."""
    if height * width == 0:
        return []
    rate = (pyramid_down - 1.0) / pyramid_down
    sizes = [(height, width)]
    nr, nc = height, width
    while True:
        nr, nc = math.floor(rate * nr), math.floor(rate * nc)
        if nr * nc == 0 or nr < MIN_PYRAMID_HEIGHT:
            break
        sizes.append((nr, nc))
    return sizes


def tiled_pyramid_layout(
    height: int, width: int, padding: int, outer_padding: int, pyramid_down: int = 6
) -> tuple[np.ndarray, int, int]:
    """Where each pyramid level goes in the tiled tensor, as dlib lays it out.

    :return: ``(rects, rows, cols)`` with ``rects`` an (n, 4) int array of inclusive
        [left, top, right, bottom] per level and the tensor plane size.
    """
    sizes = pyramid_level_sizes(height, width, pyramid_down)
    if not sizes:
        return np.zeros((0, 4), np.int64), 0, 0
    first_h, first_w = sizes[0]
    total = sum(h + padding for h, _ in sizes) - 2 * padding
    # First column: stack levels until the rest fit beside the previous one on the way back up.
    # dlib evaluates both tests in unsigned 64-bit arithmetic (rectangle sizes are unsigned), so a
    # negative difference wraps to a huge number; that is reproduced, it changes narrow images.
    col_h, prev_w = 0, 0
    for h, w in sizes:
        fits_beside = w <= (first_w - prev_w - padding) % _U64
        past_half = ((col_h - first_h) % _U64) * 2 % _U64 >= (total - first_h) % _U64
        if fits_beside and past_half:
            break
        col_h += h + padding
        prev_w = w
    col_h -= padding
    rows, cols = col_h + 2 * outer_padding, first_w + 2 * outer_padding

    rects: list[tuple[int, int, int, int]] = []
    y, i = outer_padding, 0
    while y < col_h + outer_padding and i < len(sizes):
        h, w = sizes[i]
        rects.append((outer_padding, y, outer_padding + w - 1, y + h - 1))
        y += h + padding
        i += 1
    y -= padding
    # (dlib compares with level 0's slot, which is still at the origin if nothing was placed.)
    first = rects[0] if rects else (0, 0, first_w - 1, first_h - 1)
    # Second column: right-aligned, bottom-up from the bottom of the first column.
    while i < len(sizes):
        h, w = sizes[i]
        right, bottom = outer_padding + first_w - 1, y - 1
        rect = (right - w + 1, bottom - h + 1, right, bottom)
        overlaps = not (rect[2] < first[0] or rect[0] > first[2] or rect[3] < first[1] or rect[1] > first[3])
        if overlaps:
            break
        rects.append(rect)
        y -= h + padding
        i += 1
    out = np.array(rects, dtype=np.int64).reshape(-1, 4)
    if len(out) == 0 or out[:, :2].min() < 0 or (out[:, 3] >= rows).any() or (out[:, 2] >= cols).any():
        # Images narrower than the padding: dlib's layout degenerates and dlib fails on them.
        log.debug("no valid tiled pyramid for a %dx%d image", width, height)
        return np.zeros((0, 4), np.int64), 0, 0
    return out, rows, cols


def _nearest_level(rects: np.ndarray, points: np.ndarray) -> np.ndarray:
    """For integer points (n, 2) [x, y]: the first tile containing each, else the nearest one."""
    px, py = points[:, 0:1], points[:, 1:2]
    left, top, right, bottom = (rects[None, :, k] for k in range(4))
    inside = (px >= left) & (px <= right) & (py >= top) & (py <= bottom)
    dx = np.clip(px, left, right) - px
    dy = np.clip(py, top, bottom) - py
    dist = np.hypot(dx, dy)
    return np.where(inside.any(axis=1), np.argmax(inside, axis=1), np.argmin(dist, axis=1))


def tensor_to_image_space(rects: np.ndarray, boxes: np.ndarray, pyramid_down: int = 6) -> np.ndarray:
    """Map float (n, 4) boxes [l, t, r, b] in tensor space to the original image (float)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return boxes
    centre = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2.0, (boxes[:, 1] + boxes[:, 3]) / 2.0], axis=1)
    level = _nearest_level(rects, _round_half_up(centre))
    origin = rects[level][:, [0, 1, 0, 1]].astype(np.float64)
    out = boxes - origin
    ratio = pyramid_down / (pyramid_down - 1.0)
    for step in range(int(level.max(initial=0))):
        up = level > step
        out[up] = out[up] * ratio + 0.3
    return out


def image_to_tensor_space(rects: np.ndarray, scale: float, boxes: np.ndarray, pyramid_down: int = 6) -> np.ndarray:
    """Map float (n, 4) image boxes into the pyramid level nearest ``scale`` (0 < scale <= 1)."""
    if not 0 < scale <= 1:
        raise ValueError(f"scale must be in (0, 1], not {scale}")
    rate = (pyramid_down - 1.0) / pyramid_down
    level = int(np.clip(_lround(math.log(scale) / math.log(rate)), 0, len(rects) - 1))
    out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    for _ in range(level):
        out = (out - 0.3) * rate
    return out + rects[level][[0, 1, 0, 1]]


def build_input_tensor(images: Sequence[np.ndarray], params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The network input for same-sized RGB uint8 images: (N, 3, rows, cols) float32 and tile rects."""
    h, w = images[0].shape[:2]
    if any(img.shape[:2] != (h, w) for img in images):
        raise ValueError("all images in one tensor must have the same size")
    pyr = int(params.get("pyramid_down", 6))
    rects, rows, cols = tiled_pyramid_layout(
        h, w, int(params["pyramid_padding"]), int(params["pyramid_outer_padding"]), pyr
    )
    tensor = np.zeros((len(images), 3, rows, cols), dtype=_F32)
    if len(rects) == 0:
        return tensor, rects
    mean = np.asarray(params["mean_rgb"], dtype=_F32).reshape(3, 1, 1)
    l0, t0 = int(rects[0, 0]), int(rects[0, 1])
    for n, img in enumerate(images):
        planes = img.transpose(2, 0, 1).astype(_F32)
        tensor[n, :, t0 : t0 + h, l0 : l0 + w] = (planes - mean) / _F32(256)
    flat = tensor.reshape(len(images) * 3, rows, cols)
    for k in range(1, len(rects)):
        pl, pt, pr, pb = (int(v) for v in rects[k - 1])
        left, top, right, bottom = (int(v) for v in rects[k])
        src = flat[:, pt : pb + 1, pl : pr + 1]
        flat[:, top : bottom + 1, left : right + 1] = _resize_bilinear(
            src, bottom - top + 1, right - left + 1, to_uint8=False
        )
    return tensor, rects


# -- decoding ----------------------------------------------------------------------------------


def _overlaps(a: np.ndarray, b: np.ndarray, iou_thresh: float, covered_thresh: float) -> bool:
    """dlib's ``test_box_overlap`` on inclusive integer boxes [l, t, r, b]."""
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if iw <= 0 or ih <= 0:
        return False
    inner = float(iw * ih)
    hull = float((max(a[2], b[2]) - min(a[0], b[0]) + 1) * (max(a[3], b[3]) - min(a[1], b[1]) + 1))
    area_a = float((a[2] - a[0] + 1) * (a[3] - a[1] + 1))
    area_b = float((b[2] - b[0] + 1) * (b[3] - b[1] + 1))
    return inner / hull > iou_thresh or inner / area_a > covered_thresh or inner / area_b > covered_thresh


def nms(boxes: np.ndarray, scores: np.ndarray, iou_thresh: float, covered_thresh: float) -> list[int]:
    """Indices kept by dlib's greedy NMS, best score first (boxes are integer [l, t, r, b])."""
    order = np.argsort(-scores, kind="stable")
    kept: list[int] = []
    for i in order:
        if not any(_overlaps(boxes[j], boxes[i], iou_thresh, covered_thresh) for j in kept):
            kept.append(int(i))
    return kept


def decode_scores(
    scores: np.ndarray, rects: np.ndarray, params: dict[str, Any], adjust_threshold: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """One image's score map (K, H', W') to NMS-kept integer boxes (n, 4) and scores (n,)."""
    windows = params["detector_windows"]
    sy, sx = params["feature_stride"]
    oy, ox = params["feature_offset"]
    pyr = int(params.get("pyramid_down", 6))
    all_boxes, all_scores = [], []
    for k, win in enumerate(windows):
        rr, cc = np.nonzero(scores[k].astype(np.float64) > adjust_threshold)
        if len(rr) == 0:
            continue
        px, py = cc * sx + ox, rr * sy + oy
        half_w, half_h = (win["width"] - 1) / 2.0, (win["height"] - 1) / 2.0
        tensor_boxes = np.stack([px - half_w, py - half_h, px + half_w, py + half_h], axis=1)
        all_boxes.append(_lround(tensor_to_image_space(rects, tensor_boxes, pyr)))
        all_scores.append(scores[k, rr, cc].astype(np.float64))
    if not all_boxes:
        return np.zeros((0, 4), np.int64), np.zeros(0)
    boxes, confs = np.concatenate(all_boxes), np.concatenate(all_scores)
    iou_thresh, covered_thresh = params["overlaps_nms"]
    kept = nms(boxes, confs, float(iou_thresh), float(covered_thresh))
    return boxes[kept], confs[kept]


# -- the detector ------------------------------------------------------------------------------


def _as_rgb(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {img.dtype}")
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an HxW or HxWx3 image, got shape {img.shape}")
    return img


class MmodDetector:
    """dlib's ``cnn_face_detection_model_v1`` on onnxruntime: same boxes, same scores."""

    def __init__(self, onnx_path: str | Path, params: dict[str, Any], session: Any = None) -> None:
        self.onnx_path = Path(onnx_path)
        self.params = params
        self._session = session

    @property
    def session(self) -> Any:
        """The onnxruntime session, created on first use (CPU unless one was given)."""
        if self._session is None:
            import onnxruntime as ort

            log.info("loading MMOD detector %s", self.onnx_path)
            self._session = ort.InferenceSession(str(self.onnx_path), providers=["CPUExecutionProvider"])
        return self._session

    def _run(self, tensor: np.ndarray) -> np.ndarray:
        return self.session.run(["scores"], {"input": tensor})[0]

    def _finish(self, scores: np.ndarray, rects: np.ndarray, upsample: int, adjust_threshold: float) -> list[Detection]:
        boxes, confs = decode_scores(scores, rects, self.params, adjust_threshold)
        if upsample:
            boxes = _lround(_rect_down_2(boxes, upsample))
        return [Detection(Rect(*(int(v) for v in b)), float(s)) for b, s in zip(boxes, confs, strict=True)]

    def _prepare(self, image: np.ndarray, upsample: int) -> np.ndarray:
        img = _as_rgb(image)
        for _ in range(upsample):
            img = pyramid_up(img)
        return img

    def _too_small(self, tensor: np.ndarray, rects: np.ndarray) -> bool:
        """True when the image has no pyramid or the network would have no output (dlib fails)."""
        min_rows, min_cols = self.params.get("min_input_size", (1, 1))
        return len(rects) == 0 or tensor.shape[2] < min_rows or tensor.shape[3] < min_cols

    def detect(
        self,
        rgb: np.ndarray,
        upsample: int = 0,
        adjust_threshold: float = 0.0,
        regions: Sequence[Rect] | None = None,
    ) -> list[Detection]:
        """Faces in one RGB (or grayscale) uint8 image, best score first, boxes in its pixels.

        ``upsample`` doubles the image that many times first (finds smaller faces, slower);
        ``adjust_threshold`` is added to the detection threshold (0: dlib's default).
        ``regions`` is accepted for the detector interface; the CNN always scans the whole image.
        """
        img = self._prepare(rgb, upsample)
        if img.shape[0] * img.shape[1] == 0:
            return []
        tensor, rects = build_input_tensor([img], self.params)
        if self._too_small(tensor, rects):
            return []
        return self._finish(self._run(tensor)[0], rects, upsample, adjust_threshold)

    def detect_batch(
        self,
        images: Sequence[np.ndarray],
        upsample: int = 0,
        batch_size: int = 8,
        adjust_threshold: float = 0.0,
    ) -> list[list[Detection]]:
        """:meth:`detect` for many images; same-sized ones share network runs of ``batch_size``."""
        prepared = [self._prepare(img, upsample) for img in images]
        results: list[list[Detection]] = [[] for _ in prepared]
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(prepared):
            if img.shape[0] * img.shape[1]:
                by_size.setdefault(img.shape[:2], []).append(i)
        for idx in by_size.values():
            for start in range(0, len(idx), max(1, batch_size)):
                chunk = idx[start : start + max(1, batch_size)]
                tensor, rects = build_input_tensor([prepared[i] for i in chunk], self.params)
                if self._too_small(tensor, rects):
                    continue
                out = self._run(tensor)
                for j, i in enumerate(chunk):
                    results[i] = self._finish(out[j], rects, upsample, adjust_threshold)
        return results


def load(files) -> MmodDetector:
    """The ``cnn`` backend of :data:`edge.faces.backends.DETECTORS`."""
    params = json.loads(files.path("mmod_detector.json").read_text())
    return MmodDetector(files.path("mmod_detector.onnx"), params, session=files.session("mmod_detector.onnx"))
