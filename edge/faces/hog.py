"""dlib's HOG frontal face detector re-implemented in numpy + OpenCV (no dlib on the bus).

This reproduces what ``dlib.get_frontal_face_detector()(rgb, upsample)`` does, step by step:

1. optional up-sampling: dlib's ``pyramid_up`` (a bilinear resize to about twice the size) per
   requested level; detections are mapped back with ``pyramid_down<2>``'s ``rect_down``;
2. an image pyramid with ``pyramid_down<6>`` (each level a bilinear resize to 5/6 of the size);
3. FHOG features (31 planes per 8x8 cell) per level, with dlib's rules: the strongest of the
   three colour gradients, 18 snapped orientations, bilinear voting into cells, 4-block
   normalisation with truncation at 0.2, the contrast-insensitive and texture planes, and a
   zero border so that the detection window can overhang the image;
4. each of the detector's 5 linear filters correlated over each level (dlib runs a separable,
   rank-truncated version of each filter plane; we use the same truncated filters, all 5 applied
   by one matrix product per level);
5. windows scoring at least the component's threshold mapped back to image rectangles;
6. dlib's greedy non-max suppression with its ``test_box_overlap``.

``HogDetector.detect(..., regions=...)`` scans only the windows lying inside given boxes: per
level it resizes and computes features for those boxes plus a few cells of context only, so each
scanned window scores exactly as in the scan of the whole image (``edge.door.motion`` plans the boxes).

The pixel-level arithmetic (float32 rounding of the resize, orientation snapping and channel
tie-breaking) follows dlib's x86 code paths so that the boxes agree with dlib's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from edge.faces.geometry import Detection, Rect

log = logging.getLogger(__name__)

_F32 = np.float32

#: Unit vectors of the 9 unsigned orientations (dlib's rounded constants).
_DIRECTIONS = np.array(
    [
        [1.0000, 0.0000],
        [0.9397, 0.3420],
        [0.7660, 0.6428],
        [0.500, 0.8660],
        [0.1736, 0.9848],
        [-0.1736, 0.9848],
        [-0.5000, 0.8660],
        [-0.7660, 0.6428],
        [-0.9397, 0.3420],
    ],
    dtype=np.float32,
)


# ---------------------------------------------------------------------------------------------
# bilinear resize (dlib's resize_image for RGB images)
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _resize_tables(in_n: int, out_n: int) -> tuple:
    """Per-output-index sample positions along one axis, as dlib's RGB resize computes them.

    Returns ``(lo, hi, frac32, inv32, frac64, vector_count)``: the first ``vector_count``
    outputs come from dlib's 4-wide float32 loop (the positions accumulate in float32), the rest
    from its scalar double-precision tail.
    """
    scale = (in_n - 1) / float(max(out_n - 1, 1))
    # float32 lanes: lane k starts at float32(-4*scale + k*scale) and steps by float32(4*scale).
    step = _F32(4 * scale)
    n_iter = out_n // 4 + 2
    x0 = -4 * scale
    lanes = np.empty((n_iter, 4), dtype=np.float32)
    for k in range(4):
        seq = np.empty(n_iter + 1, dtype=np.float32)
        seq[0] = _F32(x0 + k * scale)
        seq[1:] = step
        lanes[:, k] = np.cumsum(seq, dtype=np.float32)[1:]
    left = lanes.astype(np.int32)  # truncation, like cvttps
    # the vector loop stops at the first group whose last lane would read past the input
    bad = np.nonzero(left[:, 3] + 1 >= in_n)[0]
    n_groups = int(bad[0]) if len(bad) else n_iter
    vec = min(4 * n_groups, out_n)
    pos32 = lanes.reshape(-1)[:vec]
    lo = np.empty(out_n, dtype=np.intp)
    hi = np.empty(out_n, dtype=np.intp)
    frac32 = np.zeros(out_n, dtype=np.float32)
    lo[:vec] = left.reshape(-1)[:vec]
    hi[:vec] = lo[:vec] + 1
    frac32[:vec] = pos32 - lo[:vec].astype(np.float32)
    # scalar tail: x = -scale + vec*scale, then += scale per column (double precision)
    tail = out_n - vec
    frac64 = np.zeros(out_n, dtype=np.float64)
    if tail > 0:
        seq = np.empty(tail + 1, dtype=np.float64)
        seq[0] = -scale + vec * scale
        seq[1:] = scale
        xs = np.cumsum(seq)[1:]
        t_lo = np.floor(xs).astype(np.intp)
        lo[vec:] = t_lo
        hi[vec:] = np.minimum(t_lo + 1, in_n - 1)
        frac64[vec:] = xs - t_lo
    inv32 = (_F32(1) - frac32).astype(np.float32)
    return lo, hi, frac32, inv32, frac64, vec


@lru_cache(maxsize=64)
def _row_tables(in_n: int, out_n: int) -> tuple:
    """Row sample positions: dlib accumulates the row coordinate in double precision."""
    scale = (in_n - 1) / float(max(out_n - 1, 1))
    seq = np.empty(out_n + 1, dtype=np.float64)
    seq[0] = -scale
    seq[1:] = scale
    ys = np.cumsum(seq)[1:]
    top = np.floor(ys).astype(np.intp)
    bottom = np.minimum(top + 1, in_n - 1)
    frac = ys - top
    return top, bottom, frac


@lru_cache(maxsize=32)
def _weight_grids(in_h: int, out_h: int, in_w: int, out_w: int, vec: int) -> tuple[np.ndarray, ...]:
    """float32 corner weights (tl, tr, bl, br) of dlib's vector loop, each shaped (out_h, vec)."""
    _, _, tb = _row_tables(in_h, out_h)
    _, _, lr32, inv_lr32, _, _ = _resize_tables(in_w, out_w)
    tb32 = tb.astype(np.float32)[:, None]
    inv_tb32 = (1.0 - tb).astype(np.float32)[:, None]
    a, ia = lr32[None, :vec], inv_lr32[None, :vec]
    return inv_tb32 * ia, inv_tb32 * a, tb32 * ia, tb32 * a


def resize_planes(planes: list[np.ndarray], out_h: int, out_w: int) -> list[np.ndarray]:
    """dlib's bilinear ``resize_image`` for an RGB image held as three uint8 planes.

    dlib samples with aligned corners; its 4-wide loop computes in float32 and truncates, its
    scalar tail (the last few columns) computes in double and truncates. Both are reproduced.
    """
    in_h, in_w = planes[0].shape
    return resize_block(planes, (in_h, in_w), (0, 0), (out_h, out_w), (0, max(out_h, 0)), (0, max(out_w, 0)))


def resize_block(
    planes: list[np.ndarray],
    in_size: tuple[int, int],
    origin: tuple[int, int],
    out_size: tuple[int, int],
    rows: tuple[int, int],
    cols: tuple[int, int],
) -> list[np.ndarray]:
    """Rows ``rows`` x columns ``cols`` (half-open ranges) of :func:`resize_planes`' result.

    ``planes`` hold the part of an ``in_size`` image that starts at ``origin`` (row, col) and
    covers every input pixel those outputs sample. Each output pixel is computed exactly as in
    the resize of the whole image.
    """
    (in_h, in_w), (out_h, out_w) = in_size, out_size
    (r0, r1), (c0, c1), (oy, ox) = rows, cols, origin
    if out_h <= 0 or out_w <= 0 or in_h == 0 or in_w == 0:
        return [np.zeros((max(r1 - r0, 0), max(c1 - c0, 0)), dtype=np.uint8) for _ in planes]
    top, bottom, tb = _row_tables(in_h, out_h)
    lo, hi, _, _, lr64, vec = _resize_tables(in_w, out_w)
    top, bottom, tb = top[r0:r1] - oy, bottom[r0:r1] - oy, tb[r0:r1]
    v1 = min(c1, vec)  # outputs [c0, v1) come from the vector loop, [max(c0, vec), c1) from the tail
    s0 = max(c0, vec)
    weights = [g[r0:r1, c0:v1] for g in _weight_grids(in_h, out_h, in_w, out_w, vec)] if c0 < v1 else []
    out = []
    for plane in planes:
        res = np.empty((r1 - r0, c1 - c0), dtype=np.uint8)
        rows_t = plane[top]
        rows_b = plane[bottom]
        if weights:
            tlf, trf, blf, brf = weights
            lo_v, hi_v = lo[c0:v1] - ox, hi[c0:v1] - ox
            acc = tlf * rows_t[:, lo_v]
            acc += trf * rows_t[:, hi_v]
            acc += blf * rows_b[:, lo_v]
            acc += brf * rows_b[:, hi_v]
            res[:, : v1 - c0] = acc  # float -> uint8 truncates, as dlib's conversion does
        if s0 < c1:
            t = tb[:, None]
            f = lr64[None, s0:c1]
            lo_s, hi_s = lo[s0:c1] - ox, hi[s0:c1] - ox
            val = (1 - t) * ((1 - f) * rows_t[:, lo_s] + f * rows_t[:, hi_s]) + t * (
                (1 - f) * rows_b[:, lo_s] + f * rows_b[:, hi_s]
            )
            res[:, s0 - c0 :] = val
        out.append(res)
    return out


def resize_rgb(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """dlib's bilinear ``resize_image`` for an HxWx3 uint8 RGB image."""
    planes = [np.ascontiguousarray(img[:, :, c]) for c in range(3)]
    return np.dstack(resize_planes(planes, out_h, out_w))


def pyramid_up(planes: list[np.ndarray]) -> list[np.ndarray]:
    """dlib's ``pyramid_up`` with ``pyramid_down<2>``: a resize to the size ``rect_up`` gives."""
    h, w = planes[0].shape
    # rect_up maps corner (x, y) to ((x + 1.25) * 2, (y + 0.75) * 2); sizes come from the
    # rounded bottom-right corner.
    out_w = _lround((w - 1 + 1.25) * 2) + 1
    out_h = _lround((h - 1 + 0.75) * 2) + 1
    return resize_planes(planes, out_h, out_w)


def _lround(x: float) -> int:
    """C's ``lround``: round half away from zero."""
    return int(np.floor(abs(x) + 0.5)) * (1 if x >= 0 else -1)


def _row_span(in_n: int, out_n: int) -> tuple[np.ndarray, np.ndarray]:
    """First and last input row that each output row of a resize samples."""
    top, bottom, _ = _row_tables(in_n, out_n)
    return top, bottom


def _col_span(in_n: int, out_n: int) -> tuple[np.ndarray, np.ndarray]:
    """First and last input column that each output column of a resize samples."""
    lo, hi, *_ = _resize_tables(in_n, out_n)
    return lo, hi


# ---------------------------------------------------------------------------------------------
# FHOG
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _orientation_lut() -> np.ndarray:
    """Orientation bin (0..17) for every integer gradient in [-255, 255]^2, flat by (gy, gx)."""
    g = np.arange(-255, 256, dtype=np.float32)
    gy, gx = np.meshgrid(g, g, indexing="ij")
    best = np.zeros_like(gx)
    best_o = np.zeros(gx.shape, dtype=np.uint8)
    for o in range(9):
        dot = gx * _DIRECTIONS[o, 0] + gy * _DIRECTIONS[o, 1]
        better = dot > best
        best = np.where(better, dot, best)
        best_o[better] = o
        neg = -dot
        better = neg > best
        best = np.where(better, neg, best)
        best_o[better] = o + 9
    return best_o.reshape(-1)


@lru_cache(maxsize=8)
def _cell_weights(n: int, cell: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For pixel coordinates 1..n-1 along an axis: first cell index (+1) and the two weights."""
    p = np.arange(1, n, dtype=np.float64)
    pos = ((p + 0.5) / cell - 0.5).astype(np.float32)
    ip = np.floor(pos).astype(np.intp)
    w0 = (pos - ip).astype(np.float32)  # weight of the next cell
    w1 = (_F32(1) - w0).astype(np.float32)  # weight of the first cell
    return ip + 1, w1, w0


def fhog(planes: list[np.ndarray], cell: int, pad_rows: int, pad_cols: int) -> np.ndarray:
    """dlib's ``extract_fhog_features`` of an RGB image (three uint8 planes): (31, rows, cols) float32.

    The cell grid is surrounded by zeros: ``(pad-1)//2`` before and ``pad//2`` after, so that a
    filter of ``pad_rows x pad_cols`` cells can be slid over it. Returns an array with zero rows
    or columns when the image is too small.
    """
    h, w = planes[0].shape
    cells_r = int(h / cell + 0.5)
    cells_c = int(w / cell + 0.5)
    hog_r, hog_c = max(cells_r - 2, 0), max(cells_c - 2, 0)
    if hog_r == 0 or hog_c == 0:
        return np.zeros((31, 0, 0), dtype=np.float32)
    vis_r = min(cells_r * cell, h) - 1
    vis_c = min(cells_c * cell, w) - 1
    hist = np.zeros((18, cells_r + 2, cells_c + 2), dtype=np.float64)
    if vis_r > 1 and vis_c > 1:
        _vote(planes, vis_r, vis_c, cell, hist)
    return _normalise(hist.astype(np.float32), cells_r, cells_c, hog_r, hog_c, pad_rows, pad_cols)


#: cells a scanned block reaches beyond its region, before and after (see ``HogDetector._axis_plan``)
_LEAD, _TRAIL = 2, 3
#: feature cells next to a block edge inside the image that differ from the whole image's
_EXACT_LEAD, _EXACT_TRAIL = 1, 2

#: pixel rows voted per pass, so that the temporaries of a large image stay cache-sized
_VOTE_ROWS = 128


def _vote(planes: list[np.ndarray], vis_r: int, vis_c: int, cell: int, hist: np.ndarray) -> None:
    """Bilinear votes of every pixel's gradient magnitude into ``hist`` (18, cells+2, cells+2)."""
    n_cols = vis_c - 1
    # dlib handles columns 1.. in groups of 8 with SIMD code, where a tie between channel
    # gradient lengths goes to the later channel, and the leftover columns with scalar code,
    # where it goes to the earlier channel.
    groups = max(0, -(-(vis_c - 8) // 8))
    split = min(8 * groups, n_cols)
    iy, wy1, wy0 = _cell_weights(vis_r, cell)
    ix, wx1, wx0 = _cell_weights(vis_c, cell)
    n_hc = hist.shape[2]
    lut = _orientation_lut()
    for a in range(1, vis_r, _VOTE_ROWS):
        b = min(a + _VOTE_ROWS, vis_r)  # pixel rows a..b-1
        # integer gradients (exact); each candidate is carried as one code, gy * 511 + gx
        best_code = best_len = mask = None
        for plane in planes:
            gx = np.subtract(plane[a:b, 2 : vis_c + 1], plane[a:b, 0 : vis_c - 1], dtype=np.int32)
            gy = np.subtract(plane[a + 1 : b + 1, 1:vis_c], plane[a - 1 : b - 1, 1:vis_c], dtype=np.int32)
            length = gx * gx
            length += gy * gy
            code = gy
            code *= 511
            code += gx
            if best_len is None:
                best_code, best_len = code, length
                mask = np.empty(length.shape, dtype=bool)
                continue
            np.greater_equal(length[:, :split], best_len[:, :split], out=mask[:, :split])
            np.greater(length[:, split:], best_len[:, split:], out=mask[:, split:])
            np.copyto(best_code, code, where=mask)
            np.maximum(best_len, length, out=best_len)
        best_code += 255 * 511 + 255
        # votes of these rows land in histogram rows first..last; collect them there
        first, last = int(iy[a - 1]), int(iy[b - 2]) + 1
        n_hr = last - first + 1
        size = 18 * n_hr * n_hc
        index = np.take(lut, best_code).astype(np.intp)
        index *= n_hr * n_hc
        index += (iy[a - 1 : b - 1, None] - first) * n_hc + ix[None, :]
        index = index.reshape(-1)
        v = np.sqrt(best_len.astype(np.float32))
        local = np.zeros(size + n_hc + 1, dtype=np.float64)  # room for the votes shifted right/down
        # dlib's vote weights in float32: vy * (vx * v); a vote into the cell right of / below
        # a pixel's first cell is the first cell's bin shifted by 1 / n_hc
        for dx, wx in ((0, wx1), (1, wx0)):
            vx = v * wx[None, :]
            for dy, wy in ((0, wy1), (n_hc, wy0)):
                weights = (vx * wy[a - 1 : b - 1, None]).reshape(-1)
                local[dy + dx : dy + dx + size] += np.bincount(index, weights, size)
        hist[:, first : last + 1] += local[:size].reshape(18, n_hr, n_hc)


def _normalise(
    hist: np.ndarray, cells_r: int, cells_c: int, hog_r: int, hog_c: int, pad_rows: int, pad_cols: int
) -> np.ndarray:
    """Block-normalised, truncated FHOG planes (31, rows, cols) from the cell histograms, in float32."""
    cells = hist[:, 1 : cells_r + 1, 1 : cells_c + 1]
    folded = cells[:9] + cells[9:]
    energy = np.zeros((cells_r, cells_c), dtype=np.float32)
    for o in range(9):
        energy += folded[o] * folded[o]
    eps = _F32(0.0001)
    # energy of 2x2-cell blocks, summed in dlib's order, indexed by the block's top-left cell
    block = ((energy[:-1, :-1] + energy[:-1, 1:]) + energy[1:, :-1]) + energy[1:, 1:] + eps
    # dlib's 4 lanes: the blocks touching cell (y+1, x+1) with top-left (y+1,x+1), (y,x+1), (y+1,x), (y,x)
    lanes = (
        block[1 : hog_r + 1, 1 : hog_c + 1],
        block[0:hog_r, 1 : hog_c + 1],
        block[1 : hog_r + 1, 0:hog_c],
        block[0:hog_r, 0:hog_c],
    )
    h = hist[:, 2 : hog_r + 2, 2 : hog_c + 2]  # cells (y+1, x+1)
    insens_h = h[:9] + h[9:]
    sens = []
    insens = []
    texture = []
    for lane in lanes:
        nn = _F32(0.2) * np.sqrt(lane)
        n = _F32(0.1) / nn
        s = np.minimum(h, nn) * n  # (18, hog_r, hog_c)
        t = np.zeros((hog_r, hog_c), dtype=np.float32)
        for o in range(0, 18, 3):
            t += (s[o] + s[o + 1]) + s[o + 2]
        t *= _F32(2 * 0.2357)
        sens.append(s)
        insens.append(np.minimum(insens_h, nn) * n)
        texture.append(t)
    out = np.zeros((31, hog_r + pad_rows - 1, hog_c + pad_cols - 1), dtype=np.float32)
    r0, c0 = (pad_rows - 1) // 2, (pad_cols - 1) // 2
    dst = out[:, r0 : r0 + hog_r, c0 : c0 + hog_c]
    # a horizontal sum of 4 lanes adds them pairwise: (l0 + l1) + (l2 + l3)
    dst[:18] = (sens[0] + sens[1]) + (sens[2] + sens[3])
    dst[18:27] = (insens[0] + insens[1]) + (insens[2] + insens[3])
    dst[27:31] = np.stack(texture)
    return out


# ---------------------------------------------------------------------------------------------
# detector
# ---------------------------------------------------------------------------------------------


def _separable_filter(f: np.ndarray) -> np.ndarray:
    """The rank-truncated version of one filter plane that dlib's separable filtering applies."""
    u, s, vt = np.linalg.svd(f)
    thresh = max(1e-4, float(s.max()) * 0.001)
    approx = np.zeros(f.shape, dtype=np.float64)
    for j in range(len(s)):
        if s[j] >= thresh:
            col = (u[:, j] * np.sqrt(s[j])).astype(np.float32).astype(np.float64)
            row = (vt[j, :] * np.sqrt(s[j])).astype(np.float32).astype(np.float64)
            approx += np.outer(col, row)
    return approx


class HogDetector:
    """dlib's frontal face detector (HOG + linear SVM), loaded from :func:`models.hog.convert_hog`'s npz."""

    def __init__(self, npz_path: str | Path) -> None:
        with np.load(Path(npz_path), allow_pickle=False) as z:
            self.num_components = int(z["num_components"].item())
            self.cell = int(z["cell_size"].item())
            self.padding = int(z["padding"].item())
            self.fhog_rows, self.fhog_cols = (int(v) for v in z["fhog_size"])
            self.max_levels = int(z["max_pyramid_levels"].item())
            self.min_h, self.min_w = (int(v) for v in z["min_pyramid_layer_size"])
            self.pyramid_down = int(z["pyramid_down"].item())
            self.thresholds = [float(t) for t in z["thresholds"]]
            self.iou_thresh, self.covered_thresh = (float(v) for v in z["overlap_thresholds"])
            exact = [z[f"filter64_{i}"] for i in range(self.num_components)]
        self.box_rows = self.fhog_rows - 2 * self.padding
        self.box_cols = self.fhog_cols - 2 * self.padding
        fr, fc = self.fhog_rows, self.fhog_cols
        filters = np.empty((self.num_components, fr, fc, 31), dtype=np.float64)
        for i, f in enumerate(exact):
            use_separable = self._dlib_uses_separable(f)
            for p in range(31):
                filters[i, :, :, p] = _separable_filter(f[:, :, p]) if use_separable else f[:, :, p]
        # the filters as one matrix: rows (column offset, plane), columns (row offset, component)
        self._weights = np.ascontiguousarray(
            filters.astype(np.float32).transpose(2, 3, 1, 0).reshape(fc * 31, fr * self.num_components)
        )
        log.info("HOG detector: %d components of %dx%d cells", self.num_components, fr, fc)

    def _dlib_uses_separable(self, f: np.ndarray) -> bool:
        """dlib filters with the rank-truncated planes when that needs fewer 1-D filters."""
        total = 0
        for p in range(f.shape[2]):
            s = np.linalg.svd(f[:, :, p], compute_uv=False)
            total += int(np.sum(s >= max(1e-4, float(s.max()) * 0.001)))
        return not total > f.shape[2] * min(f.shape[0], f.shape[1]) / 3.0

    # -- pyramid ---------------------------------------------------------------------------

    def _num_levels(self, h: int, w: int) -> int:
        ratio = (self.pyramid_down - 1.0) / self.pyramid_down
        left, top, right, bottom = 0, 0, w - 1, h - 1
        levels = 0
        while True:
            left, top = _lround((left - 0.3) * ratio), _lround((top - 0.3) * ratio)
            right, bottom = _lround((right - 0.3) * ratio), _lround((bottom - 0.3) * ratio)
            levels += 1
            if not (right - left + 1 >= self.min_w and bottom - top + 1 >= self.min_h and levels < self.max_levels):
                return levels

    def _scores(self, feats: np.ndarray) -> np.ndarray:
        """Filter responses (comp, out_rows, out_cols) for every window fully inside ``feats``.

        One matrix product instead of a correlation per plane and component: each row of ``x``
        holds the 31 features of ``fhog_cols`` consecutive cells of one feature row, so ``x @
        weights`` gives every window row's contribution to each component's score, and the
        ``fhog_rows`` contributions of a window are then summed.
        """
        _, rows, cols = feats.shape
        fr, fc, n = self.fhog_rows, self.fhog_cols, self.num_components
        out_r, out_c = rows - fr + 1, cols - fc + 1
        cells = np.ascontiguousarray(feats.transpose(1, 2, 0))  # (rows, cols, 31)
        runs = np.lib.stride_tricks.sliding_window_view(cells, fc, axis=1)  # (rows, out_c, 31, fc)
        x = np.ascontiguousarray(runs.transpose(0, 1, 3, 2)).reshape(rows * out_c, fc * 31)
        part = (x @ self._weights).reshape(rows, out_c, fr, n)
        acc = part[:out_r, :, 0].copy()
        for dr in range(1, fr):
            acc += part[dr : dr + out_r, :, dr]
        return np.ascontiguousarray(acc.transpose(2, 0, 1))

    def _rect_from_cell(self, r: np.ndarray, c: np.ndarray, level: int) -> list[tuple[float, ...]]:
        """Map windows whose top-left feature cell is (r, c) to image rectangles at level 0."""
        cs = self.cell
        off_r, off_c = (self.fhog_rows - 1) // 2, (self.fhog_cols - 1) // 2
        # the window's centre cell in the padded map, then dlib's centred_rect of the box size
        cr = r + self.fhog_rows // 2
        cc = c + self.fhog_cols // 2
        left = cc - self.box_cols // 2
        top = cr - self.box_rows // 2
        right = left + self.box_cols - 1
        bottom = top + self.box_rows - 1

        def to_img(p: np.ndarray, off: int) -> np.ndarray:
            q = (p + 1 - off) * cs + 1
            return q + np.where(q >= 0, cs // 2, -(cs // 2))

        coords = [to_img(left, off_c), to_img(top, off_r), to_img(right, off_c), to_img(bottom, off_r)]
        pts = [x.astype(np.float64) for x in coords]
        ratio = self.pyramid_down / (self.pyramid_down - 1.0)
        for _ in range(level):
            pts = [p * ratio + 0.3 for p in pts]
        return list(zip(*pts, strict=True))

    # -- public ----------------------------------------------------------------------------

    def detect(
        self,
        rgb: np.ndarray,
        upsample: int = 0,
        adjust_threshold: float = 0.0,
        regions: Sequence[Rect] | None = None,
    ) -> list[Detection]:
        """Faces in an HxWx3 uint8 RGB image, as dlib's detector reports them (score = margin).

        With ``regions`` (boxes in ``rgb``'s pixels) only the detection windows lying inside one
        of them are scanned, at every pyramid level; each such window gets the score the scan of
        the whole image gives it (its features are computed from enough surrounding pixels), so
        a face inside a region is found with the box and score of a whole-image scan.
        """
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 RGB image, got shape {rgb.shape}")
        planes = [np.ascontiguousarray(rgb[:, :, c], dtype=np.uint8) for c in range(3)]
        for _ in range(upsample):
            planes = pyramid_up(planes)
            if regions is not None:  # rect_up: x -> 2x + 2.5, y -> 2y + 1.5, with a pixel to spare
                regions = [Rect(2 * r.left, 2 * r.top, 2 * r.right + 5, 2 * r.bottom + 5) for r in regions]
        cands = self._candidates(planes, adjust_threshold, regions)
        # dlib sorts by score (descending) when there are several components, then keeps each
        # box that overlaps none of those kept before it.
        if self.num_components > 1:
            cands.sort(key=lambda d: -d[0])
        kept: list[tuple[float, Rect]] = []
        for score, rect in cands:
            if any(self._overlaps(k, rect) for _, k in kept):
                continue
            kept.append((score, rect))
        out = []
        for score, rect in kept:
            if upsample:
                rect = self._rect_down(rect, upsample)
            out.append(Detection(rect, float(score)))
        return out

    def _candidates(
        self, planes: list[np.ndarray], adjust_threshold: float, regions: Sequence[Rect] | None = None
    ) -> list[tuple[float, Rect]]:
        found = self._scan(planes, adjust_threshold, regions)
        # per component: in scan order (level, row, col), then stably by score, as dlib lists them
        cands: list[tuple[float, Rect]] = []
        for i in range(self.num_components):
            keys = sorted(k for k in found if k[0] == i)
            dets: list[tuple[float, Rect]] = []
            for level in sorted({k[1] for k in keys}):
                at = [k for k in keys if k[1] == level]
                rr = np.array([k[2] for k in at])
                cc = np.array([k[3] for k in at])
                for key, box in zip(at, self._rect_from_cell(rr, cc, level), strict=True):
                    dets.append((found[key] - self.thresholds[i], Rect(*(_lround(v) for v in box))))
            dets.sort(key=lambda d: -d[0])
            cands.extend(dets)
        return cands

    def _scan(
        self, planes: list[np.ndarray], adjust_threshold: float, regions: Sequence[Rect] | None = None
    ) -> dict[tuple[int, int, int, int], float]:
        """Windows scoring at least their threshold: (component, level, row, col) -> score.

        (row, col) is the window's top-left cell in the level's padded feature map.
        """
        h, w = planes[0].shape
        levels = self._num_levels(h, w)
        n = self.pyramid_down
        sizes = [(h, w)]
        for _ in range(1, levels):
            sizes.append(((n - 1) * sizes[-1][0] // n, (n - 1) * sizes[-1][1] // n))
        if regions is None:
            regions = [Rect(0, 0, w - 1, h - 1)]
        # (component, level, row, col) of a window's top-left cell in the level's padded map -> score
        found: dict[tuple[int, int, int, int], float] = {}
        for region in regions:
            reg = region.clipped(w, h)
            if reg.width <= 0 or reg.height <= 0:
                continue
            reg_levels = self._region_levels(reg, sizes)
            if reg_levels == 0:
                continue
            row_plan = self._axis_plan([s[0] for s in sizes[:reg_levels]], reg.top, reg.bottom + 1, _row_span)
            col_plan = self._axis_plan([s[1] for s in sizes[:reg_levels]], reg.left, reg.right + 1, _col_span)
            (ry, _, _, _), (rx, _, _, _) = row_plan[0], col_plan[0]
            block = [p[ry : row_plan[0][1], rx : col_plan[0][1]] for p in planes]
            for level in range(reg_levels):
                (ry0, ry1, sy0, sy1), (rx0, rx1, sx0, sx1) = row_plan[level], col_plan[level]
                if level > 0:
                    (py0, _, _, _), (px0, _, _, _) = row_plan[level - 1], col_plan[level - 1]
                    block = resize_block(block, sizes[level - 1], (py0, px0), sizes[level], (ry0, ry1), (rx0, rx1))
                scan = [p[sy0 - ry0 : sy1 - ry0, sx0 - rx0 : sx1 - rx0] for p in block]
                feats = fhog(scan, self.cell, self.fhog_rows, self.fhog_cols)
                if feats.shape[1] < self.fhog_rows or feats.shape[2] < self.fhog_cols:
                    continue
                scores = self._scores(feats)
                lh, lw = sizes[level]
                i0, i1 = self._exact_windows(scores.shape[1], sy0, sy1 == lh, self.fhog_rows)
                j0, j1 = self._exact_windows(scores.shape[2], sx0, sx1 == lw, self.fhog_cols)
                if i0 >= i1 or j0 >= j1:
                    continue
                dy, dx = sy0 // self.cell, sx0 // self.cell  # the scanned block's offset in cells
                for i in range(self.num_components):
                    thresh = self.thresholds[i] + adjust_threshold
                    # dlib compares the float32 score with the double threshold in double precision
                    level_scores = scores[i, i0:i1, j0:j1].astype(np.float64)
                    rr, cc = np.nonzero(level_scores >= thresh)
                    for r, c, val in zip(rr.tolist(), cc.tolist(), level_scores[rr, cc].tolist(), strict=True):
                        found.setdefault((i, level, r + i0 + dy, c + j0 + dx), val)
        return found

    def _region_levels(self, reg: Rect, sizes: list[tuple[int, int]]) -> int:
        """How many pyramid levels have windows that can lie inside ``reg``.

        A window of a deeper level covers more of the image; once it is larger than the region
        (allowing half a window of overhang where the region reaches the image's edge, as windows
        overhang the image there), that level and all deeper ones are left out.
        """
        (h, w), cs = sizes[0], self.cell
        count = 0
        for lh, lw in sizes:
            for size, length, lo, hi, full, lvl in (
                (self.box_rows, reg.height, reg.top, reg.bottom, h, lh),
                (self.box_cols, reg.width, reg.left, reg.right, w, lw),
            ):
                scale = full / lvl  # level pixels -> image pixels
                window = ((size - 1) * cs + 1) * scale
                room = length + window * ((lo == 0) + (hi == full - 1)) / 2 + cs * scale
                if window > room:
                    return count
            count += 1
        return count

    def _axis_plan(
        self, lengths: list[int], start: int, end: int, span: Callable[[int, int], tuple[np.ndarray, np.ndarray]]
    ) -> list[tuple[int, int, int, int]]:
        """Along one axis, per pyramid level: the pixels to resize and the pixels to scan.

        ``[start, end)`` is a region at level 0. The scanned pixels are the region scaled to the
        level, widened by ``_LEAD`` cells before and ``_TRAIL`` after (so that the windows inside
        the region have exact features) and aligned to the cell grid; the resized pixels also hold
        every pixel that the next level's resized pixels sample. ``span(in, out)`` gives the
        first and last input index each output index samples.
        """
        cs = self.cell
        plan = []
        for length in lengths:
            s = length / lengths[0]
            lo = max(0, (math.floor(start * s) - _LEAD * cs) // cs * cs)
            hi = -(-(math.ceil(end * s) + _TRAIL * cs) // cs) * cs
            plan.append([lo, min(hi, length), lo, min(hi, length)])
        for k in range(len(lengths) - 1, 0, -1):
            first, last = span(lengths[k - 1], lengths[k])
            plan[k - 1][0] = min(plan[k - 1][0], int(first[plan[k][0]]))
            plan[k - 1][1] = max(plan[k - 1][1], int(last[plan[k][1] - 1]) + 1)
        return [(a, b, c, d) for a, b, c, d in plan]

    @staticmethod
    def _exact_windows(n_windows: int, scan_start: int, at_end: bool, size: int) -> tuple[int, int]:
        """Window indices [first, last) of a scanned block whose features equal the whole image's.

        A block edge inside the image leaves the feature cells near it incomplete: the windows
        must keep ``_EXACT_LEAD`` cells from a leading edge and ``_EXACT_TRAIL`` from a trailing one.
        At the image's own edges the block is the image, so every window there is exact.
        """
        pad = (size - 1) // 2  # zero cells before the first feature cell
        first = 0 if scan_start == 0 else pad + _EXACT_LEAD
        last = n_windows if at_end else n_windows - size + pad - _EXACT_TRAIL + 1
        return first, max(first, min(last, n_windows))

    def _overlaps(self, a: Rect, b: Rect) -> bool:
        """dlib's ``test_box_overlap``: IoU against the bounding box, or one box mostly covered."""
        iw = min(a.right, b.right) - max(a.left, b.left) + 1
        ih = min(a.bottom, b.bottom) - max(a.top, b.top) + 1
        if iw <= 0 or ih <= 0:
            return False
        inner = float(iw * ih)
        outer = float(
            (max(a.right, b.right) - min(a.left, b.left) + 1) * (max(a.bottom, b.bottom) - min(a.top, b.top) + 1)
        )
        return (
            inner / outer > self.iou_thresh
            or inner / a.area > self.covered_thresh
            or inner / b.area > self.covered_thresh
        )

    @staticmethod
    def _rect_down(rect: Rect, levels: int) -> Rect:
        """``pyramid_down<2>.rect_down(rect, levels)``: undo the up-sampling."""
        pts = [float(rect.left), float(rect.top), float(rect.right), float(rect.bottom)]
        for _ in range(levels):
            pts = [pts[0] / 2.0 - 1.25, pts[1] / 2.0 - 0.75, pts[2] / 2.0 - 1.25, pts[3] / 2.0 - 0.75]
        return Rect(*(_lround(v) for v in pts))


def load(files) -> HogDetector:
    """The ``hog`` backend of :data:`edge.faces.backends.DETECTORS`."""
    return HogDetector(files.path("hog_detector.npz"))
