"""MediaPipe's Face Mesh V2 (478 landmarks) and blendshape model (52 scores), converted to ONNX.

Following MediaPipe's face landmarker graphs:

* the region of interest (ROI) is a square rotated so that the eye line is horizontal and scaled
  1.5x around the face; from a detection it comes from the box and the two eye keypoints, from a
  previous frame's mesh from the landmarks' extent and the outer eye corners 33 and 263, which
  lets the mesh follow a face between detections;
* the ROI is cut out by one ``cv2.warpAffine`` into 256x256, pixels in [0, 1]; the model gives
  478 (x, y, z) in crop pixels (z on the x scale) and a face-presence logit; points are mapped
  back into image pixels;
* the blendshape model reads MediaPipe's fixed subset of 146 of those points, (x, y) in image
  pixels, and gives 52 scores in [0, 1] named as ARKit's blendshapes (:data:`BLENDSHAPE_NAMES`).

Head pose (yaw, pitch, roll in degrees) comes from the 3-D points (:func:`head_pose`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from edge.faces.geometry import Rect

CROP = 256
ROI_SCALE = 1.5
#: MediaPipe's face_blendshapes_graph.cc kLandmarksSubsetIdxs: the points the blendshape model reads.
BLENDSHAPE_SUBSET = np.array([
    0, 1, 4, 5, 6, 7, 8, 10, 13, 14, 17, 21, 33, 37, 39, 40, 46, 52, 53, 54, 55, 58, 61, 63, 65, 66, 67, 70,
    78, 80, 81, 82, 84, 87, 88, 91, 93, 95, 103, 105, 107, 109, 127, 132, 133, 136, 144, 145, 146, 148, 149,
    150, 152, 153, 154, 155, 157, 158, 159, 160, 161, 162, 163, 168, 172, 173, 176, 178, 181, 185, 191, 195,
    197, 234, 246, 249, 251, 263, 267, 269, 270, 276, 282, 283, 284, 285, 288, 291, 293, 295, 296, 297, 300,
    308, 310, 311, 312, 314, 317, 318, 321, 323, 324, 332, 334, 336, 338, 356, 361, 362, 365, 373, 374, 375,
    377, 378, 379, 380, 381, 382, 384, 385, 386, 387, 388, 389, 390, 397, 398, 400, 402, 405, 409, 415, 454,
    466, 468, 469, 470, 471, 472, 473, 474, 475, 476, 477,
])  # fmt: skip
BLENDSHAPE_NAMES: tuple[str, ...] = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft",
    "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight",
    "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight",
    "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight",
    "mouthFrownLeft", "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft",
    "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight", "mouthPucker", "mouthRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft",
    "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight",
)  # fmt: skip
assert len(BLENDSHAPE_SUBSET) == 146 and len(BLENDSHAPE_NAMES) == 52
INDEX = {name: i for i, name in enumerate(BLENDSHAPE_NAMES)}
# Mesh point indices used here (MediaPipe's canonical face mesh).
RIGHT_EYE_OUTER, LEFT_EYE_OUTER = 33, 263  # the person's right eye is on the image's left
FOREHEAD, CHIN, RIGHT_CHEEK, LEFT_CHEEK, NOSE_TIP = 10, 152, 234, 454, 1
RIGHT_IRIS, LEFT_IRIS = 468, 473  # iris centres (Face Mesh V2 only)


@dataclass(frozen=True)
class Roi:
    """A square region: centre (cx, cy), side ``size`` in image pixels, ``angle`` of its x axis (radians)."""

    cx: float
    cy: float
    size: float
    angle: float = 0.0

    def to_crop(self) -> np.ndarray:
        """2x3 affine matrix: image pixels -> 256x256 crop pixels."""
        k = CROP / self.size
        c, s = math.cos(self.angle), math.sin(self.angle)
        rt = np.array([[c, s], [-s, c]]) * k  # R^T scaled
        t = np.array([CROP / 2, CROP / 2]) - rt @ np.array([self.cx, self.cy])
        return np.hstack([rt, t[:, None]])

    def from_crop(self, pts: np.ndarray) -> np.ndarray:
        """(n, 3) crop-pixel points -> image pixels (z scaled like x)."""
        k = self.size / CROP
        c, s = math.cos(self.angle), math.sin(self.angle)
        r = np.array([[c, -s], [s, c]])
        xy = (pts[:, :2] - CROP / 2) * k @ r.T + np.array([self.cx, self.cy])
        return np.hstack([xy, pts[:, 2:3] * k])


def roi_from_rect(rect: Rect, keypoints=None) -> Roi:
    """The mesh ROI of a face box in dlib's convention (any detector), rotated by the eye keypoints."""
    from edge.faces.blazeface import from_dlib_rect

    cx, cy, side = from_dlib_rect(rect)
    angle = 0.0
    if keypoints is not None and len(keypoints) >= 2:
        (x0, y0), (x1, y1) = keypoints[0], keypoints[1]
        angle = math.atan2(y1 - y0, x1 - x0)
    return Roi(cx, cy, side * ROI_SCALE, angle)


def roi_from_points(points: np.ndarray) -> Roi:
    """The ROI for the next frame from a face's 478 points, as MediaPipe tracks a face."""
    p = np.asarray(points, dtype=np.float64)[:, :2]
    d = p[LEFT_EYE_OUTER] - p[RIGHT_EYE_OUTER]
    angle = math.atan2(d[1], d[0])
    c, s = math.cos(angle), math.sin(angle)
    local = p @ np.array([[c, -s], [s, c]])  # rotate into the face frame
    lo, hi = local.min(0), local.max(0)
    mid = (lo + hi) / 2
    centre = mid @ np.array([[c, s], [-s, c]])
    return Roi(float(centre[0]), float(centre[1]), float(max(hi - lo)) * ROI_SCALE, angle)


def roi_rect(roi: Roi) -> Rect:
    """An axis-aligned box in dlib's convention around the face of ``roi`` (for the tracker)."""
    from edge.faces.blazeface import to_dlib_rect

    side = roi.size / ROI_SCALE
    return to_dlib_rect(roi.cx - side / 2, roi.cy - side / 2, roi.cx + side / 2, roi.cy + side / 2)


@dataclass(frozen=True)
class MeshFace:
    points: np.ndarray  # (478, 3) image pixels
    presence: float  # face-presence probability of the mesh model
    roi: Roi


class FaceMesh:
    """Face Mesh V2 and the blendshape model on two onnxruntime sessions."""

    def __init__(self, mesh_session, blend_session) -> None:
        self.mesh = mesh_session
        self.blend = blend_session
        self.mesh_in = mesh_session.get_inputs()[0].name
        self.mesh_out = [o.name for o in mesh_session.get_outputs()][:2]  # landmarks, presence logit
        self.blend_in = blend_session.get_inputs()[0].name

    def landmarks(self, rgb: np.ndarray, roi: Roi) -> MeshFace:
        crop = cv2.warpAffine(rgb, roi.to_crop(), (CROP, CROP), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        x = (crop.astype(np.float32) * (1.0 / 255.0))[None]
        pts, flag = self.mesh.run(self.mesh_out, {self.mesh_in: x})
        presence = 1.0 / (1.0 + math.exp(-float(np.clip(flag.reshape(-1)[0], -80, 80))))
        return MeshFace(roi.from_crop(pts.reshape(478, 3).astype(np.float64)), presence, roi)

    def blendshapes(self, points: np.ndarray) -> np.ndarray:
        """(52,) scores in [0, 1] from a face's 478 points (image pixels)."""
        x = np.asarray(points, np.float32)[BLENDSHAPE_SUBSET, :2][None]
        return self.blend.run(None, {self.blend_in: x})[0].reshape(-1)


def head_pose(points: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees from the 3-D mesh: 0, 0, 0 looking straight at the camera.

    The face frame: x from the right cheek (234) to the left cheek (454), y from the forehead (10)
    to the chin (152), made orthogonal; z = x cross y points away from the camera for a frontal face.
    """
    p = np.asarray(points, dtype=np.float64)
    x = p[LEFT_CHEEK] - p[RIGHT_CHEEK]
    x /= np.linalg.norm(x) + 1e-12
    y = p[CHIN] - p[FOREHEAD]
    y -= x * (y @ x)
    y /= np.linalg.norm(y) + 1e-12
    z = np.cross(x, y)
    yaw = math.degrees(math.atan2(-z[0], z[2]))
    pitch = math.degrees(math.atan2(z[1], z[2]))
    roll = math.degrees(math.atan2(x[1], x[0]))
    return yaw, pitch, roll


def blink(scores: np.ndarray) -> float:
    """The larger of ``eyeBlinkLeft`` and ``eyeBlinkRight``."""
    return float(max(scores[INDEX["eyeBlinkLeft"]], scores[INDEX["eyeBlinkRight"]]))


def smile(scores: np.ndarray) -> float:
    """Mean of ``mouthSmileLeft`` and ``mouthSmileRight``: the smile score of the gate."""
    return float((scores[INDEX["mouthSmileLeft"]] + scores[INDEX["mouthSmileRight"]]) / 2)


def load(files) -> FaceMesh:
    return FaceMesh(files.session("face_mesh_v2.onnx"), files.session("face_blendshapes.onnx"))
