"""Convert dlib's HOG frontal face detector into a plain ``.npz`` that :mod:`edge.faces.hog` can run.

At conversion time dlib is available: :func:`convert_hog` asks it for
``dlib.get_frontal_face_detector()``, saves that detector with dlib's own serialiser, and parses
the bytes with our reader (:class:`models.dlib_serial.DlibReader`). The file holds an
``object_detector<scan_fhog_pyramid<pyramid_down<6>>>``:

* object_detector: version (2), the scanner, the box-overlap tester (IoU threshold, covered
  threshold), the number of weight vectors, then each weight vector as a column matrix;
* scan_fhog_pyramid: version (1), the (empty) feature extractor, the cached feature pyramid
  (an empty array: max size and size), cell size, padding, detection window width and height,
  max pyramid levels, min pyramid layer width and height, nuclear-norm strength, and the number
  of filter dimensions.

A weight vector holds 31 planes of ``fhog_rows x fhog_cols`` filter weights, plane after plane
and row-major inside a plane, followed by the detection threshold (bias). We store them as one
float32 array per component shaped ``(fhog_rows, fhog_cols, 31)`` plus float64 copies (the
edge needs the exact values to rebuild dlib's separable approximation of each plane).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from models.artifacts import save_npz
from models.dlib_serial import DlibFormatError, DlibReader

log = logging.getLogger(__name__)

#: ``pyramid_down<6>`` is a template argument, so it is not in the file; stated here.
PYRAMID_DOWN = 6
#: Number of FHOG feature planes of dlib's default feature extractor.
NUM_PLANES = 31


def _int_vec(values: list[int]) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def _scalar(value: int) -> np.ndarray:
    """A one-element int64 array (the npz writer stores arrays of at least one dimension)."""
    return np.asarray([value], dtype=np.int64)


def fhog_window_size(window_width: int, window_height: int, cell_size: int, padding: int) -> tuple[int, int]:
    """Filter size ``(rows, cols)`` in FHOG cells for a detection window, as dlib computes it.

    The window is centred on the origin, its corners mapped into the feature grid (one pixel
    and one cell of border, C-style truncating division), then grown by ``padding`` cells.
    """

    def to_cells(p: int) -> int:
        q = p - 1
        return int(q / cell_size) - 1  # C++ integer division truncates toward zero

    left = -(window_width // 2)
    top = -(window_height // 2)
    right = left + window_width - 1
    bottom = top + window_height - 1
    cols = to_cells(right) - to_cells(left) + 1 + 2 * padding
    rows = to_cells(bottom) - to_cells(top) + 1 + 2 * padding
    return rows, cols


def parse_fhog_detector(data: bytes, name: str = "<detector>") -> dict:
    """Parse a serialised ``object_detector<scan_fhog_pyramid<...>>`` into plain Python values."""
    r = DlibReader(data, name)
    version = r.int()
    if version != 2:
        raise r.fail(f"object_detector version {version}, expected 2")
    scanner_version = r.int()
    if scanner_version != 1:
        raise r.fail(f"scan_fhog_pyramid version {scanner_version}, expected 1")
    # default_fhog_feature_extractor writes nothing; the feature cache is a dlib::array.
    _max_size, cached = r.int(), r.int()
    if cached != 0:
        raise r.fail(f"expected an empty feature cache, found {cached} levels")
    scanner = {
        "cell_size": r.int(),
        "padding": r.int(),
        "window_width": r.int(),
        "window_height": r.int(),
        "max_pyramid_levels": r.int(),
        "min_pyramid_layer_width": r.int(),
        "min_pyramid_layer_height": r.int(),
        "nuclear_norm_regularization_strength": r.float(),
        "num_dimensions": r.int(),
    }
    rows, cols = fhog_window_size(
        scanner["window_width"], scanner["window_height"], scanner["cell_size"], scanner["padding"]
    )
    if rows * cols * NUM_PLANES != scanner["num_dimensions"]:
        raise r.fail(f"{scanner['num_dimensions']} dimensions do not fit a {rows}x{cols}x{NUM_PLANES} filter")
    iou_thresh, covered_thresh = r.float(), r.float()
    count = r.int()
    weights = []
    for _ in range(count):
        w = r.matrix()
        if w.shape != (scanner["num_dimensions"] + 1, 1):
            raise r.fail(f"weight vector shaped {w.shape}, expected ({scanner['num_dimensions'] + 1}, 1)")
        weights.append(w[:, 0])
    if not r.at_end:
        raise DlibFormatError(f"{name}: {len(data) - r.pos} bytes left over after the detector")
    return {
        **scanner,
        "fhog_rows": rows,
        "fhog_cols": cols,
        "iou_thresh": iou_thresh,
        "percent_covered_thresh": covered_thresh,
        "weights": weights,
    }


def detector_arrays(parsed: dict) -> dict[str, np.ndarray]:
    """The arrays :class:`edge.faces.hog.HogDetector` loads, from :func:`parse_fhog_detector`'s output."""
    rows, cols = parsed["fhog_rows"], parsed["fhog_cols"]
    size = rows * cols
    arrays: dict[str, np.ndarray] = {}
    thresholds = []
    for i, w in enumerate(parsed["weights"]):
        planes = w[: NUM_PLANES * size].reshape(NUM_PLANES, rows, cols)
        exact = np.ascontiguousarray(planes.transpose(1, 2, 0))  # (rows, cols, 31)
        arrays[f"filter_{i}"] = exact.astype(np.float32)
        arrays[f"filter64_{i}"] = exact.astype(np.float64)
        thresholds.append(float(w[NUM_PLANES * size]))
    arrays["thresholds"] = np.asarray(thresholds, dtype=np.float64)
    arrays["num_components"] = _scalar(len(parsed["weights"]))
    arrays["cell_size"] = _scalar(parsed["cell_size"])
    arrays["padding"] = _scalar(parsed["padding"])
    arrays["window_size"] = _int_vec([parsed["window_height"], parsed["window_width"]])
    arrays["fhog_size"] = _int_vec([rows, cols])
    arrays["max_pyramid_levels"] = _scalar(parsed["max_pyramid_levels"])
    arrays["min_pyramid_layer_size"] = _int_vec([parsed["min_pyramid_layer_height"], parsed["min_pyramid_layer_width"]])
    arrays["pyramid_down"] = _scalar(PYRAMID_DOWN)
    arrays["overlap_thresholds"] = np.asarray(
        [parsed["iou_thresh"], parsed["percent_covered_thresh"]], dtype=np.float64
    )
    return arrays


def convert_hog(out_path: Path) -> dict:
    """Write dlib's frontal face detector to ``out_path`` (npz); return manifest metadata."""
    import dlib  # conversion-time only

    out_path = Path(out_path)
    detector = dlib.get_frontal_face_detector()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "frontal_face_detector.svm"
        detector.save(str(src))
        data = src.read_bytes()
    parsed = parse_fhog_detector(data, "frontal_face_detector")
    arrays = detector_arrays(parsed)
    save_npz(out_path, arrays)
    log.info(
        "HOG detector: %d components, %dx%d cells, window %dx%d",
        len(parsed["weights"]),
        parsed["fhog_rows"],
        parsed["fhog_cols"],
        parsed["window_width"],
        parsed["window_height"],
    )
    meta: dict = {name: list(arr.shape) for name, arr in sorted(arrays.items())}
    meta.update(
        {
            "num_components": len(parsed["weights"]),
            "cell_size": parsed["cell_size"],
            "padding": parsed["padding"],
            "window_width": parsed["window_width"],
            "window_height": parsed["window_height"],
            "max_pyramid_levels": parsed["max_pyramid_levels"],
            "min_pyramid_layer_width": parsed["min_pyramid_layer_width"],
            "min_pyramid_layer_height": parsed["min_pyramid_layer_height"],
            "pyramid_down": PYRAMID_DOWN,
            "iou_thresh": parsed["iou_thresh"],
            "percent_covered_thresh": parsed["percent_covered_thresh"],
            "thresholds": [float(t) for t in arrays["thresholds"]],
        }
    )
    return meta
