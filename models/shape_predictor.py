"""Convert a serialised dlib ``shape_predictor`` (the 5- and 68-point face landmark models) to numpy.

Our own parser, written from the layout in dlib's ``image_processing/shape_predictor.h``. The
object is written as:

* the format version, an int (1);
* ``initial_shape``: a float column matrix ``[x0, y0, x1, y1, ...]`` in the face box's normalised
  coordinates (box top-left = (0, 0), bottom-right = (1, 1));
* ``forests``: one vector per cascade level of regression trees; a tree is a vector of splits
  (``idx1``, ``idx2`` as ints, ``thresh`` as a float; node ``i`` has children ``2i+1`` (taken when
  ``pixel[idx1] - pixel[idx2] > thresh``) and ``2i+2``), then a vector of leaf vectors, each a
  float column matrix of shape offsets as long as ``initial_shape``;
* ``anchor_idx``: per cascade level, for each feature pixel the landmark it hangs off;
* ``deltas``: per cascade level, for each feature pixel its (x, y) offset from that landmark, in
  the normalised coordinates of ``initial_shape``.

The trees are complete binary trees of equal depth, so every array is dense. The npz holds:

``initial_shape``      (P, 2) float32
``anchor_idx``         (C, F) int32      cascade level x feature pixel
``deltas``             (C, F, 2) float32
``split_idx1``         (C, T, S) int32   cascade level x tree x split node (breadth-first)
``split_idx2``         (C, T, S) int32
``split_thresh``       (C, T, S) float32
``leaf_values``        (C, T, L, P, 2) float32, L = S + 1

with P parts, C cascade levels, F feature pixels per level, T trees per level, S splits per tree.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from models.artifacts import save_npz
from models.dlib_serial import DlibFormatError, DlibReader

log = logging.getLogger(__name__)

_SPECIAL_EXPONENTS = {32000: math.inf, 32001: -math.inf, 32002: math.nan}


def _read_floats(reader: DlibReader, count: int) -> list[float]:
    """``count`` consecutive serialised floats, decoded in one tight loop (the models hold ~10M)."""
    data = reader.data
    pos = reader.pos
    out = [0.0] * count
    from_bytes = int.from_bytes
    ldexp = math.ldexp
    for k in range(count):
        ctrl = data[pos]
        size = ctrl & 0x0F
        if ctrl & 0x70 or not 0 < size <= 8:
            reader.pos = pos
            raise reader.fail(f"bad integer control byte 0x{ctrl:02x} in a float")
        mantissa = from_bytes(data[pos + 1 : pos + 1 + size], "little")
        if ctrl & 0x80:
            mantissa = -mantissa
        pos += 1 + size
        ctrl = data[pos]
        size = ctrl & 0x0F
        if ctrl & 0x70 or not 0 < size <= 8:
            reader.pos = pos
            raise reader.fail(f"bad integer control byte 0x{ctrl:02x} in a float")
        exponent = from_bytes(data[pos + 1 : pos + 1 + size], "little")
        if ctrl & 0x80:
            exponent = -exponent
        pos += 1 + size
        out[k] = _SPECIAL_EXPONENTS[exponent] if exponent in _SPECIAL_EXPONENTS else ldexp(mantissa, exponent)
    if pos > len(data):
        raise reader.fail("data ends inside a float")
    reader.pos = pos
    return out


def _read_column(reader: DlibReader) -> list[float]:
    """A ``matrix<float,0,1>``: negative row and column counts, then the items."""
    rows, cols = reader.int(), reader.int()
    if rows > 0 or cols > 0:
        raise reader.fail("matrix in dlib's pre-2009 format is not supported")
    if -cols != 1:
        raise reader.fail(f"expected a column vector, found {-rows}x{-cols}")
    return _read_floats(reader, -rows)


def _dense(name: str, rows: list, dtype: type) -> np.ndarray:
    """Stack nested lists into one array, failing clearly if they are ragged."""
    try:
        return np.array(rows, dtype=dtype)
    except ValueError as exc:
        raise DlibFormatError(f"{name}: the model's {name} are not all the same size") from exc


def read_shape_predictor(dat_path: Path) -> dict[str, np.ndarray]:
    """Parse a serialised ``dlib::shape_predictor`` into the dense arrays described in the module docstring."""
    reader = DlibReader.from_file(dat_path)
    version = reader.int()
    if version != 1:
        raise reader.fail(f"shape_predictor version {version}, expected 1")
    initial = _read_column(reader)
    if not initial or len(initial) % 2:
        raise reader.fail(f"initial shape has {len(initial)} values, expected a positive even number")
    num_coords = len(initial)

    idx1: list[list[list[int]]] = []
    idx2: list[list[list[int]]] = []
    thresh: list[list[list[float]]] = []
    leaves: list[list[list[list[float]]]] = []
    for _ in range(reader.int()):  # cascade levels
        level_idx1, level_idx2, level_thresh, level_leaves = [], [], [], []
        for _ in range(reader.int()):  # trees
            tree_idx1, tree_idx2, tree_thresh = [], [], []
            for _ in range(reader.int()):  # splits
                tree_idx1.append(reader.int())
                tree_idx2.append(reader.int())
                tree_thresh.append(reader.float())
            tree_leaves = reader.vector(lambda: _read_column(reader))
            if len(tree_leaves) != len(tree_idx1) + 1 or len(tree_leaves) & (len(tree_leaves) - 1):
                raise reader.fail(f"a tree with {len(tree_idx1)} splits and {len(tree_leaves)} leaves is not complete")
            if any(len(leaf) != num_coords for leaf in tree_leaves):
                raise reader.fail("a leaf vector's length differs from the initial shape's")
            level_idx1.append(tree_idx1)
            level_idx2.append(tree_idx2)
            level_thresh.append(tree_thresh)
            level_leaves.append(tree_leaves)
        idx1.append(level_idx1)
        idx2.append(level_idx2)
        thresh.append(level_thresh)
        leaves.append(level_leaves)

    anchors = reader.vector(lambda: reader.vector(reader.int))
    deltas = reader.vector(lambda: reader.vector(lambda: (reader.float(), reader.float())))
    if not reader.at_end:
        raise reader.fail(f"{len(reader.data) - reader.pos} bytes left over after the shape predictor")

    num_parts = num_coords // 2
    arrays = {
        "initial_shape": np.array(initial, dtype=np.float32).reshape(num_parts, 2),
        "anchor_idx": _dense("anchor_idx", anchors, np.int32),
        "deltas": _dense("deltas", deltas, np.float32),
        "split_idx1": _dense("split_idx1", idx1, np.int32),
        "split_idx2": _dense("split_idx2", idx2, np.int32),
        "split_thresh": _dense("split_thresh", thresh, np.float32),
    }
    leaf_values = _dense("leaf_values", leaves, np.float32)
    arrays["leaf_values"] = leaf_values.reshape(leaf_values.shape[:3] + (num_parts, 2))

    levels, features = arrays["anchor_idx"].shape
    if arrays["split_idx1"].shape[0] != levels or arrays["deltas"].shape != (levels, features, 2):
        raise DlibFormatError(f"{dat_path}: forests, anchors and deltas disagree on the number of cascade levels")
    if arrays["anchor_idx"].size and (arrays["anchor_idx"].min() < 0 or arrays["anchor_idx"].max() >= num_parts):
        raise DlibFormatError(f"{dat_path}: an anchor index is not a part of the shape")
    for key in ("split_idx1", "split_idx2"):
        if arrays[key].size and (arrays[key].min() < 0 or arrays[key].max() >= features):
            raise DlibFormatError(f"{dat_path}: a split reads a feature pixel that does not exist")
    return arrays


def convert_shape_predictor(dat_path: Path, out_path: Path) -> dict:
    """Convert dlib's ``shape_predictor`` file ``dat_path`` to a reproducible npz at ``out_path``.

    Returns metadata for the manifest: ``num_parts``, ``cascade_depth``, ``num_trees_per_level``,
    ``tree_depth``, ``feature_pool_size`` and ``arrays`` (name -> shape).
    """
    dat_path, out_path = Path(dat_path), Path(out_path)
    arrays = read_shape_predictor(dat_path)
    save_npz(out_path, arrays)
    levels, trees, splits = arrays["split_idx1"].shape
    meta = {
        "num_parts": int(arrays["initial_shape"].shape[0]),
        "cascade_depth": int(levels),
        "num_trees_per_level": int(trees),
        "tree_depth": int(splits + 1).bit_length() - 1,
        "feature_pool_size": int(arrays["anchor_idx"].shape[1]),
        "arrays": {name: list(arr.shape) for name, arr in sorted(arrays.items())},
    }
    log.info(
        "converted %s: %d parts, %d levels x %d trees of depth %d -> %s",
        dat_path.name,
        meta["num_parts"],
        levels,
        trees,
        meta["tree_depth"],
        out_path,
    )
    return meta
