"""MediaPipe's BlazeFace face detector (converted to ONNX by ``models``), with MediaPipe's pre/post-processing.

Per image, following MediaPipe's face detection graph:

1. letterbox: one ``cv2.warpAffine`` maps the whole image, aspect kept, into the model's square
   input (128 px short range, 192 px full range), black borders, pixels scaled to [-1, 1];
2. SSD anchors: short range 896 (strides 8, 16, 16, 16; 2 anchors per cell and layer, layers of
   the same stride sharing a grid), full range 2304 (stride 4, one anchor per cell); fixed size;
3. decoding: box centre/size and 6 keypoints (eyes, nose, mouth, ears) relative to the anchors,
   scores = sigmoid of the logit clipped to +-100, kept when at least ``min_score``;
4. weighted non-max suppression at IoU 0.3: each kept face is the score-weighted mean of the
   boxes (and keypoints) it suppresses;
5. boxes mapped back out of the letterbox, then converted to dlib's box convention
   (:data:`DLIB_BOX`): BlazeFace boxes run from the forehead to the chin, dlib's from the brows
   to the lower lip, so that dlib's 5-point landmarks and ResNet embedding see the face as with
   HOG boxes (measured in bench/calibrate_blazeface.py, checked in tests/unit/test_blazeface.py).

``Detection.keypoints`` keeps the 6 keypoints in image pixels (the mesh's ROI needs the eyes).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from edge.faces.geometry import Detection, Rect

log = logging.getLogger(__name__)

#: BlazeFace box (centre cx, cy, size w, h) -> dlib-convention box: centre shift in box widths
#: and heights, and the scale of the side. Medians over 102 faces found by both on the 80 London photos
#: and the demo photos; embedding distance HOG box vs this box: mean 0.032, max 0.088
#: (bench/calibrate_blazeface.py).
DLIB_BOX = {"dx": -0.0099, "dy": -0.0467, "scale": 0.9933}


@dataclass(frozen=True)
class BlazeSpec:
    size: int
    strides: tuple[int, ...]
    anchors_per_layer: int  # 2: aspect 1.0 plus the interpolated scale; 1: aspect 1.0 only
    min_score: float


SHORT = BlazeSpec(128, (8, 16, 16, 16), 2, 0.5)
FULL = BlazeSpec(192, (4,), 1, 0.6)
IOU = 0.3
SCORE_CLIP = 100.0


def make_anchors(spec: BlazeSpec) -> np.ndarray:
    """(N, 2) anchor centres in [0, 1], in the model's output order (fixed anchor size 1)."""
    out = []
    i = 0
    strides = spec.strides
    while i < len(strides):
        j = i
        while j < len(strides) and strides[j] == strides[i]:
            j += 1
        per_cell = (j - i) * spec.anchors_per_layer
        fm = -(-spec.size // strides[i])
        ys, xs = np.mgrid[0:fm, 0:fm]
        centres = np.stack([(xs + 0.5) / fm, (ys + 0.5) / fm], axis=-1).reshape(-1, 1, 2)
        out.append(np.repeat(centres, per_cell, axis=1).reshape(-1, 2))
        i = j
    return np.concatenate(out).astype(np.float32)


def letterbox_matrix(width: int, height: int, size: int) -> np.ndarray:
    """The 2x3 affine matrix mapping an image into a ``size`` square, aspect kept, centred."""
    s = size / max(width, height)
    return np.array([[s, 0.0, (size - width * s) / 2], [0.0, s, (size - height * s) / 2]], np.float64)


def weighted_nms(boxes: np.ndarray, points: np.ndarray, scores: np.ndarray, iou: float) -> list[tuple]:
    """MediaPipe's WEIGHTED non-max suppression. ``boxes`` (N, 4) as x0, y0, x1, y1.

    Returns (box, points, score) per face, best first; the score is the best member's.
    """
    order = np.argsort(-scores, kind="stable")
    remaining = order
    faces = []
    while remaining.size:
        top = remaining[0]
        b = boxes[remaining]
        x0 = np.maximum(b[:, 0], boxes[top, 0])
        y0 = np.maximum(b[:, 1], boxes[top, 1])
        x1 = np.minimum(b[:, 2], boxes[top, 2])
        y1 = np.minimum(b[:, 3], boxes[top, 3])
        inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        union = area + area[0] - inter
        overlap = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
        cluster = remaining[overlap > iou]
        w = scores[cluster][:, None]
        faces.append(
            ((boxes[cluster] * w).sum(0) / w.sum(), (points[cluster] * w[:, :, None]).sum(0) / w.sum(),
             float(scores[top]))
        )  # fmt: skip
        remaining = remaining[overlap <= iou]
    return faces


def to_dlib_rect(x0: float, y0: float, x1: float, y1: float) -> Rect:
    """A BlazeFace box (image pixels) as the box dlib's HOG detector would draw around the face."""
    w, h = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2 + DLIB_BOX["dx"] * w
    cy = (y0 + y1) / 2 + DLIB_BOX["dy"] * h
    side = DLIB_BOX["scale"] * (w + h) / 2
    left = int(round(cx - side / 2))
    top = int(round(cy - side / 2))
    n = int(round(side))
    return Rect(left, top, left + n - 1, top + n - 1)


def from_dlib_rect(rect: Rect) -> tuple[float, float, float]:
    """The inverse of :func:`to_dlib_rect`: (centre x, centre y, side) of the BlazeFace-style box."""
    side = rect.width / DLIB_BOX["scale"]
    cx = (rect.left + rect.right + 1) / 2 - DLIB_BOX["dx"] * side
    cy = (rect.top + rect.bottom + 1) / 2 - DLIB_BOX["dy"] * side
    return cx, cy, side


class BlazeFaceDetector:
    """``FaceDetector`` on a BlazeFace ONNX session (short or full range)."""

    def __init__(self, session, spec: BlazeSpec = SHORT) -> None:
        self.session = session
        self.spec = spec
        self.anchors = make_anchors(spec)
        self.input_name = session.get_inputs()[0].name
        outs = [o.name for o in session.get_outputs()]
        # regressors (1, N, 16) and classificators (1, N, 1), in that order in both models
        self.output_names = outs
        n = session.get_outputs()[0].shape[1]
        if n != len(self.anchors):
            raise ValueError(f"model has {n} boxes but the anchor spec gives {len(self.anchors)}")

    def raw(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """(boxes x0,y0,x1,y1, keypoints (N,6,2), scores) in image pixels for faces above ``min_score``."""
        h, w = rgb.shape[:2]
        size = self.spec.size
        m = letterbox_matrix(w, h, size)
        tensor = cv2.warpAffine(rgb, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        x = (tensor.astype(np.float32) * (2.0 / 255.0) - 1.0)[None]
        reg, cls = self.session.run(self.output_names, {self.input_name: x})
        logits = np.clip(cls[0, :, 0], -SCORE_CLIP, SCORE_CLIP)
        keep = logits >= np.log(self.spec.min_score / (1 - self.spec.min_score))
        reg = reg[0, keep]
        scores = 1.0 / (1.0 + np.exp(-logits[keep]))
        anchors = self.anchors[keep]
        centre = reg[:, 0:2] / size + anchors
        half = reg[:, 2:4] / size / 2
        boxes = np.concatenate([centre - half, centre + half], axis=1) * size
        points = (reg[:, 4:16].reshape(-1, 6, 2) / size + anchors[:, None, :]) * size
        # out of the letterbox: x_img = (x_in - t) / s
        s, tx, ty = m[0, 0], m[0, 2], m[1, 2]
        boxes = (boxes - np.array([tx, ty, tx, ty])) / s
        points = (points - np.array([tx, ty])) / s
        return boxes, points, scores

    def detect_full(self, rgb: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, float]]:
        """MediaPipe's detections: (box x0,y0,x1,y1, 6 keypoints, score) in image pixels, best first."""
        boxes, points, scores = self.raw(rgb)
        if not len(scores):
            return []
        return weighted_nms(boxes, points, scores, IOU)

    def detect(self, rgb: np.ndarray, upsample: int = 0, *, regions: Sequence[Rect] | None = None) -> list[Detection]:
        """Faces in dlib's box convention, best first. ``upsample`` is ignored (one letterboxed pass
        sees faces down to ~1/10 of the frame's long side); ``regions`` too (the whole frame costs ~2 ms)."""
        return [
            Detection(to_dlib_rect(*box), score, keypoints=tuple(map(tuple, pts.tolist())))
            for box, pts, score in self.detect_full(rgb)
        ]


def load_short(files) -> BlazeFaceDetector:
    return BlazeFaceDetector(files.session("blazeface_short.onnx"), SHORT)


def load_full(files) -> BlazeFaceDetector:
    return BlazeFaceDetector(files.session("blazeface_full.onnx"), FULL)
