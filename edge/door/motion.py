"""Where the face detector looks in each frame: the whole frame, or a few regions around motion.

One job: plan, per frame, the regions of the detection-scale image that HOG scans, as Frigate
gates its detector with motion. A cheap motion mask (a grey copy about 160 px wide, its absolute
difference from a running average, thresholded, dilated, its blobs boxed) plus the boxes of the
live tracks, each widened by a margin and merged when they overlap, are the regions. The whole
frame is scanned on the first frame, every ``full_every`` frames (a face that appears without
moving is found within that many frames) and when the regions would cover most of the frame.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import cv2
import numpy as np

from edge.faces.geometry import Rect


class MotionMask:
    """Boxes of what changed since the recent frames, from a small grey copy of each frame."""

    def __init__(self, width: int = 160, threshold: int = 25, alpha: float = 0.2) -> None:
        self.width = width
        self.threshold = threshold
        self.alpha = alpha  # weight of the newest frame in the running average
        self._average: np.ndarray | None = None

    def boxes(self, rgb: np.ndarray) -> list[Rect]:
        """Bounding boxes of the moving blobs, in ``rgb``'s pixels; none on the first frame."""
        h, w = rgb.shape[:2]
        scale = min(1.0, self.width / w)
        small = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        grey = cv2.GaussianBlur(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY), (3, 3), 0).astype(np.float32)
        if self._average is None or self._average.shape != grey.shape:
            self._average = grey
            return []
        diff = cv2.absdiff(grey, self._average)
        cv2.accumulateWeighted(grey, self._average, self.alpha)
        mask = cv2.dilate((diff > self.threshold).astype(np.uint8), np.ones((3, 3), np.uint8), iterations=2)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        out = []
        for contour in contours:
            x, y, bw, bh = cv2.boundingRect(contour)
            right, bottom = math.ceil((x + bw) / scale), math.ceil((y + bh) / scale)  # exclusive
            out.append(Rect(int(x / scale), int(y / scale), min(w, right) - 1, min(h, bottom) - 1))
        return out


def expand(r: Rect, fraction: float, at_least: int, width: int, height: int) -> Rect:
    """``r`` widened on every side by ``fraction`` of its size (at least ``at_least`` px), clipped."""
    mx = max(at_least, round(fraction * r.width))
    my = max(at_least, round(fraction * r.height))
    return Rect(r.left - mx, r.top - my, r.right + mx, r.bottom + my).clipped(width, height)


def merge(boxes: Iterable[Rect]) -> list[Rect]:
    """Boxes that overlap or touch replaced by their bounding box, until none overlap."""
    merged = list(boxes)
    changed = True
    while changed:
        changed = False
        for i in range(len(merged)):
            for j in range(i + 1, len(merged)):
                a, b = merged[i], merged[j]
                if a.left <= b.right + 1 and b.left <= a.right + 1 and a.top <= b.bottom + 1 and b.top <= a.bottom + 1:
                    merged[i] = Rect(
                        min(a.left, b.left), min(a.top, b.top), max(a.right, b.right), max(a.bottom, b.bottom)
                    )
                    del merged[j]
                    changed = True
                    break
            if changed:
                break
    return merged


class RegionPlanner:
    """Per frame: ``None`` (scan the whole frame) or the regions to scan (maybe none)."""

    def __init__(
        self,
        full_every: int = 12,
        margin: float = 0.5,
        min_margin: int = 100,
        max_fraction: float = 0.6,
        motion: MotionMask | None = None,
    ) -> None:
        self.full_every = full_every
        self.margin = margin
        self.min_margin = min_margin
        self.max_fraction = max_fraction
        self.motion = motion or MotionMask()
        self.frames = 0
        self.full_passes = 0
        self.scanned = 0.0  # sum over frames of the fraction of the frame scanned

    def plan(self, image: np.ndarray, tracks: Iterable[Rect]) -> list[Rect] | None:
        """Regions of ``image`` to scan given the live tracks' boxes (in ``image``'s pixels)."""
        h, w = image.shape[:2]
        moving = self.motion.boxes(image)  # every frame, so that the running average keeps up
        index, self.frames = self.frames, self.frames + 1
        regions = merge(expand(r, self.margin, self.min_margin, w, h) for r in [*moving, *tracks])
        regions = [r for r in regions if r.width > 0 and r.height > 0]
        area = sum(r.area for r in regions) / float(w * h)
        if index % self.full_every == 0 or area > self.max_fraction:
            self.full_passes += 1
            self.scanned += 1.0
            return None
        self.scanned += area
        return regions
