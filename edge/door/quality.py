"""Is this face good enough to decide on? Each failed check gives a reason the rider can act on.

Checks, on the 5-point landmarks and the aligned 150x150 chip:

* too small: pixels between the eye centres below ``min_eye_distance``;
* partly outside the frame: the face box crosses the frame edge;
* head turned: yaw (nose off the eye midline) or pitch (nose too high/low), relative to the
  eye distance, outside the configured bounds;
* blurred: variance of the Laplacian of the grey chip below ``min_sharpness``;
* too dark / too bright: mean grey level of the chip's central face region out of range.

:func:`assess_mesh` makes the same checks from Face Mesh V2 on the bus (edge.faces.mesh): head
yaw, pitch and roll in degrees from the 3-D mesh, eyes open (``eyeBlinkLeft/Right`` below
``max_blink``), iris-to-iris distance for size, and blur and light on a 150x150 grey copy of the
face box. :func:`assess` (5-point landmarks and the aligned chip) stays for enrollment photos.

The 5-point model orders its points: the eye on the image's right (2 corners), the eye on the
image's left (2 corners), nose base (measured on the fixtures: points 0-1 have the larger x).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edge.faces.geometry import Rect


class QualityConfig(BaseModel):
    """Bounds of the quality gate (measured on the shipped clip and photos: see docs/thresholds.md)."""

    model_config = ConfigDict(extra="forbid")

    min_eye_distance: float = Field(22.0, gt=0, description="Pixels between eye centres, at least")
    max_yaw: float = Field(0.30, gt=0, description="|nose offset from eye midline| / eye distance, at most")
    min_pitch: float = Field(0.45, description="Nose drop below the eye line / eye distance, at least")
    max_pitch: float = Field(1.25, description="... and at most")
    min_sharpness: float = Field(40.0, ge=0, description="Variance of the Laplacian of the grey chip, at least")
    min_brightness: float = Field(50.0, ge=0, le=255, description="Mean grey level of the face, at least")
    max_brightness: float = Field(215.0, ge=0, le=255, description="... and at most")
    max_yaw_deg: float = Field(25.0, gt=0, le=90, description="Mesh: |head yaw| in degrees, at most")
    max_pitch_deg: float = Field(25.0, gt=0, le=90, description="Mesh: |head pitch| in degrees, at most")
    max_roll_deg: float = Field(30.0, gt=0, le=180, description="Mesh: |head roll| in degrees, at most")
    max_blink: float = Field(0.6, gt=0, le=1, description="Mesh: eyeBlinkLeft/Right blendshape score, at most")


REASONS = {
    "eyes_closed": "Please open your eyes",
    "too_small": "Please come closer to the camera",
    "outside_frame": "Please step fully into view",
    "head_turned": "Please look straight at the camera",
    "blurred": "Please hold still for a moment",
    "too_dark": "Too dark to see you: please face the light",
    "too_bright": "Too much glare: please step out of direct light",
}


@dataclass
class Quality:
    eye_distance: float
    yaw: float
    pitch: float
    sharpness: float
    brightness: float
    reasons: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.reasons

    @property
    def message(self) -> str:
        return REASONS[self.reasons[0]] if self.reasons else ""


@dataclass
class MeshQuality(Quality):
    roll: float = 0.0
    blink: float = 0.0


def face_patch(rgb: np.ndarray, rect: Rect, size: int = 150) -> np.ndarray:
    """The face box as a ``size`` x ``size`` grey image (clipped to the frame)."""
    h, w = rgb.shape[:2]
    crop = rgb[max(rect.top, 0) : min(rect.bottom + 1, h), max(rect.left, 0) : min(rect.right + 1, w)]
    if crop.size == 0:
        return np.zeros((size, size), np.uint8)
    return cv2.resize(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY), (size, size), interpolation=cv2.INTER_AREA)


def assess_mesh(
    points: np.ndarray, blink: float, grey: np.ndarray, rect: Rect, frame_shape: tuple[int, ...], cfg: QualityConfig
) -> MeshQuality:
    """Quality from Face Mesh V2's 478 points (image pixels), the larger eyeBlink score and
    :func:`face_patch` of the face box."""
    from edge.faces.mesh import LEFT_IRIS, RIGHT_IRIS, head_pose

    yaw, pitch, roll = head_pose(points)
    eye_distance = float(np.hypot(*(points[LEFT_IRIS, :2] - points[RIGHT_IRIS, :2])))
    sharpness = float(cv2.Laplacian(grey, cv2.CV_64F).var())
    h, w = grey.shape
    brightness = float(grey[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4].mean())
    q = MeshQuality(eye_distance, yaw, pitch, sharpness, brightness, roll=roll, blink=blink)
    height, width = frame_shape[:2]
    if rect.left < 0 or rect.top < 0 or rect.right >= width or rect.bottom >= height:
        q.reasons.append("outside_frame")
    if eye_distance < cfg.min_eye_distance:
        q.reasons.append("too_small")
    if abs(yaw) > cfg.max_yaw_deg or abs(pitch) > cfg.max_pitch_deg or abs(roll) > cfg.max_roll_deg:
        q.reasons.append("head_turned")
    if blink > cfg.max_blink:
        q.reasons.append("eyes_closed")
    _light_and_blur(q, brightness, sharpness, cfg)
    return q


def _light_and_blur(q: Quality, brightness: float, sharpness: float, cfg: QualityConfig) -> None:
    """The checks both gates share: the face's light and its sharpness."""
    if brightness < cfg.min_brightness:
        q.reasons.append("too_dark")
    elif brightness > cfg.max_brightness:
        q.reasons.append("too_bright")
    if sharpness < cfg.min_sharpness:
        q.reasons.append("blurred")


def pose(landmarks5: np.ndarray) -> tuple[float, float, float]:
    """(eye distance in px, yaw ratio, pitch ratio) from 5-point landmarks."""
    pts = np.asarray(landmarks5, dtype=np.float64)
    # Points 0-1 are the eye on the image's right, 2-3 the eye on the image's left: the axis runs
    # image-left -> image-right, so that for an upright face the nose lies at positive pitch.
    image_right_eye, image_left_eye, nose = pts[0:2].mean(axis=0), pts[2:4].mean(axis=0), pts[4]
    right_eye, left_eye = image_left_eye, image_right_eye
    axis = left_eye - right_eye
    dist = float(np.hypot(*axis))
    if dist < 1e-6:
        return 0.0, 0.0, 0.0
    ux = axis / dist
    uy = np.array([-ux[1], ux[0]])
    rel = nose - (right_eye + left_eye) / 2
    return dist, float(rel @ ux / dist), float(rel @ uy / dist)


def assess(
    landmarks5: np.ndarray, chip: np.ndarray, rect: Rect, frame_shape: tuple[int, ...], cfg: QualityConfig
) -> Quality:
    eye_distance, yaw, pitch = pose(landmarks5)
    grey = cv2.cvtColor(chip, cv2.COLOR_RGB2GRAY)
    sharpness = float(cv2.Laplacian(grey, cv2.CV_64F).var())
    h, w = grey.shape
    brightness = float(grey[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4].mean())
    q = Quality(eye_distance, yaw, pitch, sharpness, brightness)
    height, width = frame_shape[:2]
    if rect.left < 0 or rect.top < 0 or rect.right >= width or rect.bottom >= height:
        q.reasons.append("outside_frame")
    if eye_distance < cfg.min_eye_distance:
        q.reasons.append("too_small")
    if abs(yaw) > cfg.max_yaw or not cfg.min_pitch <= pitch <= cfg.max_pitch:
        q.reasons.append("head_turned")
    _light_and_blur(q, brightness, sharpness, cfg)
    return q
