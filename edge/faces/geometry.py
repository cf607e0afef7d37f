"""Boxes shared by every detector: dlib's rectangle convention, face_recognition's css order."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rect:
    """A box in pixels with dlib's convention: ``right`` and ``bottom`` are inclusive."""

    left: int
    top: int
    right: int
    bottom: int

    @property
    def width(self) -> int:
        return self.right - self.left + 1

    @property
    def height(self) -> int:
        return self.bottom - self.top + 1

    @property
    def area(self) -> int:
        return max(0, self.width) * max(0, self.height)

    def css(self) -> tuple[int, int, int, int]:
        """``(top, right, bottom, left)``, the order face_recognition's public API uses."""
        return (self.top, self.right, self.bottom, self.left)

    @classmethod
    def from_css(cls, css: tuple[int, int, int, int]) -> Rect:
        top, right, bottom, left = css
        return cls(left, top, right, bottom)

    def clipped(self, width: int, height: int) -> Rect:
        """This box trimmed to an image of ``width`` x ``height`` pixels."""
        return Rect(max(self.left, 0), max(self.top, 0), min(self.right, width - 1), min(self.bottom, height - 1))


@dataclass(frozen=True)
class Detection:
    rect: Rect
    score: float
    #: Detector keypoints in image pixels, if the detector gives any (BlazeFace: right eye, left
    #: eye, nose tip, mouth, right ear, left ear; "right" is the person's right).
    keypoints: tuple[tuple[float, float], ...] | None = None


def iou(a: Rect, b: Rect) -> float:
    """Intersection over union, counting pixels as dlib does (inclusive corners)."""
    inter = Rect(max(a.left, b.left), max(a.top, b.top), min(a.right, b.right), min(a.bottom, b.bottom))
    if inter.width <= 0 or inter.height <= 0:
        return 0.0
    union = a.area + b.area - inter.area
    return inter.area / union if union > 0 else 0.0


def scale_rect(r: Rect, factor: float) -> Rect:
    """A box found on an image scaled by ``factor``, in the original image's pixels."""
    if factor == 1.0:
        return r
    return Rect(*(int(round(v / factor)) for v in (r.left, r.top, r.right, r.bottom)))
