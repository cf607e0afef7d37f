"""Facial landmarks without dlib: dlib's regression-tree cascade (Kazemi & Sullivan) in numpy.

Runs the arrays written by :func:`models.shape_predictor.convert_shape_predictor` and gives the
same points as ``dlib.shape_predictor``. What the cascade does, per face box:

* the shape starts as the model's mean shape, in box-normalised coordinates ((0, 0) is the box's
  top-left pixel, (1, 1) its bottom-right pixel);
* at each cascade level, a similarity transform (least squares, Umeyama) from the mean shape to the
  current shape moves that level's feature pixels (an anchor landmark plus an offset); each one is
  mapped to the image, rounded to the nearest pixel, and read as a grey level ``(r + g + b) // 3``
  (0 outside the image);
* every tree of the level walks its splits (``pixel[a] - pixel[b] > threshold`` goes to child
  ``2i+1``, else ``2i+2``) and its leaf's offsets are added to the shape, tree by tree, in float32;
* the final shape is mapped back to the image and, as dlib does, rounded to whole pixels.

All faces and all trees of a level are evaluated together, one depth level at a time. The float32
steps follow dlib's order of operations so that pixel rounding agrees with dlib's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge.faces.geometry import Rect

log = logging.getLogger(__name__)

_REQUIRED = ("initial_shape", "anchor_idx", "deltas", "split_idx1", "split_idx2", "split_thresh", "leaf_values")


def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares rotation+scale (no translation part) taking ``src`` (P, 2) to each ``dst`` (n, P, 2).

    Returns (n, 2, 2) float64 ``[[a, -b], [b, a]]``: the closed form of Umeyama's solution in 2-D,
    which dlib computes with an SVD. Identity for a one-point shape, as dlib does.
    """
    n = dst.shape[0]
    if src.shape[0] < 2:
        return np.broadcast_to(np.eye(2), (n, 2, 2)).copy()
    s = src.astype(np.float64)
    d = dst.astype(np.float64)
    s = s - s.mean(axis=0)
    d = d - d.mean(axis=1, keepdims=True)
    sigma = float((s * s).sum())
    if sigma == 0.0:
        return np.broadcast_to(np.eye(2), (n, 2, 2)).copy()
    dot = (d[..., 0] * s[:, 0] + d[..., 1] * s[:, 1]).sum(axis=1) / sigma
    cross = (d[..., 1] * s[:, 0] - d[..., 0] * s[:, 1]).sum(axis=1) / sigma
    out = np.empty((n, 2, 2), dtype=np.float64)
    out[:, 0, 0] = dot
    out[:, 0, 1] = -cross
    out[:, 1, 0] = cross
    out[:, 1, 1] = dot
    return out


class ShapePredictor:
    """A converted dlib shape predictor (5- or 68-point face landmarks), evaluated with numpy."""

    def __init__(self, npz_path: str | Path) -> None:
        path = Path(npz_path)
        with np.load(path, allow_pickle=False) as npz:
            missing = [name for name in _REQUIRED if name not in npz.files]
            if missing:
                raise ValueError(f"{path}: not a converted shape predictor (missing {', '.join(missing)})")
            self.initial_shape = npz["initial_shape"].astype(np.float32)
            self.anchor_idx = npz["anchor_idx"].astype(np.intp)
            self.deltas = npz["deltas"].astype(np.float32)
            self.split_idx1 = npz["split_idx1"].astype(np.intp)
            self.split_idx2 = npz["split_idx2"].astype(np.intp)
            self.split_thresh = npz["split_thresh"].astype(np.float32)
            leaves = npz["leaf_values"].astype(np.float32)
        self.num_parts = int(self.initial_shape.shape[0])
        levels, trees, splits = self.split_idx1.shape
        # Leaves flattened to (levels, trees * leaves, parts * 2) so one take() fetches a level's offsets.
        self.leaf_values = np.ascontiguousarray(leaves.reshape(levels, trees * (splits + 1), self.num_parts * 2))
        self.num_levels, self.num_trees, self.num_splits = int(levels), int(trees), int(splits)
        self.tree_depth = int(splits + 1).bit_length() - 1
        self._leaf_base = (np.arange(trees, dtype=np.intp) * (splits + 1))[None, :]
        self._split_base = (np.arange(trees, dtype=np.intp) * splits)[None, :]
        log.debug("loaded shape predictor %s: %d parts, %d levels x %d trees", path, self.num_parts, levels, trees)

    # -- public API ----------------------------------------------------------------------------

    def predict(self, rgb: np.ndarray, rect: Rect, *, subpixel: bool = False) -> np.ndarray:
        """Landmarks of the face in ``rect`` as a (num_parts, 2) float array of (x, y) pixels.

        By default the points are rounded to whole pixels, exactly as dlib returns them; with
        ``subpixel=True`` the unrounded positions come back instead.
        """
        return self.predict_many(rgb, [rect], subpixel=subpixel)[0]

    def predict_many(self, rgb: np.ndarray, rects: Sequence[Rect], *, subpixel: bool = False) -> np.ndarray:
        """Landmarks for several boxes in one image: (len(rects), num_parts, 2) float64."""
        image = np.asarray(rgb)
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
            raise ValueError(f"expected an HxWx3 (or HxW grey) uint8 image, got {image.dtype} {image.shape}")
        n = len(rects)
        if n == 0:
            return np.zeros((0, self.num_parts, 2), dtype=np.float64)
        box = np.array([[r.left, r.top, r.right, r.bottom] for r in rects], dtype=np.float64)
        origin = box[:, None, 0:2]  # (n, 1, 2): where normalised (0, 0) lands
        scale = box[:, None, 2:4] - origin  # (n, 1, 2): normalised (1, 1) lands on the bottom-right pixel

        shape = np.broadcast_to(self.initial_shape, (n, self.num_parts, 2)).copy()
        for level in range(self.num_levels):
            feats = self._feature_pixels(image, shape, level, origin, scale)
            leaves = self._walk_trees(feats, level)
            offsets = self.leaf_values[level][leaves]  # (n, trees, parts * 2)
            # dlib adds the trees' offsets one after another in float32. numpy reduces over a
            # non-innermost axis in that same sequential order (no pairwise summation), so the
            # float32 rounding matches; tests/test_landmarks_parity.py checks this assumption.
            stacked = np.concatenate([shape.reshape(n, 1, -1), offsets], axis=1)
            shape = np.add.reduce(stacked, axis=1, dtype=np.float32).reshape(n, self.num_parts, 2)
        points = shape.astype(np.float64) * scale + origin
        return points if subpixel else np.floor(points + 0.5)

    # -- internals -----------------------------------------------------------------------------

    def _feature_pixels(
        self, image: np.ndarray, shape: np.ndarray, level: int, origin: np.ndarray, scale: np.ndarray
    ) -> np.ndarray:
        """Grey levels (n, F) float32 of one cascade level's feature pixels, placed on the current shape."""
        tform = _similarity(self.initial_shape, shape).astype(np.float32)  # (n, 2, 2)
        deltas = self.deltas[level]  # (F, 2)
        anchors = shape[:, self.anchor_idx[level]]  # (n, F, 2) float32
        dx, dy = deltas[:, 0], deltas[:, 1]
        px = tform[:, 0:1, 0] * dx + tform[:, 0:1, 1] * dy + anchors[..., 0]
        py = tform[:, 1:2, 0] * dx + tform[:, 1:2, 1] * dy + anchors[..., 1]
        x = np.floor(px.astype(np.float64) * scale[..., 0] + origin[..., 0] + 0.5)
        y = np.floor(py.astype(np.float64) * scale[..., 1] + origin[..., 1] + 0.5)
        height, width = image.shape[:2]
        inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
        xi = np.where(inside, x, 0).astype(np.intp)
        yi = np.where(inside, y, 0).astype(np.intp)
        if image.ndim == 3:
            pix = image[yi, xi].astype(np.uint16)
            grey = (pix[..., 0] + pix[..., 1] + pix[..., 2]) // 3
        else:
            grey = image[yi, xi]
        return np.where(inside, grey, 0).astype(np.float32)

    def _walk_trees(self, feats: np.ndarray, level: int) -> np.ndarray:
        """Flat leaf indices (n, trees) into ``leaf_values[level]`` reached by every tree for every face."""
        n, num_feats = feats.shape
        flat_feats = feats.ravel()
        row_base = (np.arange(n, dtype=np.intp) * num_feats)[:, None]
        idx1 = self.split_idx1[level].ravel()
        idx2 = self.split_idx2[level].ravel()
        thresh = self.split_thresh[level].ravel()
        node = np.zeros((n, self.num_trees), dtype=np.intp)
        for _ in range(self.tree_depth):
            flat = self._split_base + node
            a = flat_feats[row_base + idx1[flat]]
            b = flat_feats[row_base + idx2[flat]]
            node = 2 * node + 1 + ((a - b) <= thresh[flat])
        return self._leaf_base + (node - self.num_splits)


def load_small(files) -> ShapePredictor:
    """The ``small`` backend of :data:`edge.faces.backends.LANDMARKS`: dlib's 5-point model (CC0)."""
    return ShapePredictor(files.path("shape_predictor_5.npz"))


def load_large(files) -> ShapePredictor:
    """The ``large`` backend: dlib's 68-point model (iBUG 300-W, non-commercial licence)."""
    return ShapePredictor(files.path("shape_predictor_68.npz"))


#: Where the 5-point model's points lie among the 68 (eye corners, then the base of the nose).
FIVE_OF_68 = (45, 42, 36, 39, 33)


def five_points(points: np.ndarray) -> np.ndarray:
    """The 5-point layout (right eye corners, left eye corners, nose) of a 5- or 68-point shape."""
    return points if len(points) == 5 else points[list(FIVE_OF_68)]
