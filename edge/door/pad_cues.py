"""Image cues of a screen or a print, used only to refuse (docs/presentation-attacks.md).

* :func:`moire_peak`: a display's pixel grid beats against the camera's own sampling and leaves
  narrow, isolated peaks in the spectrum of the face patch (moire), where a real face's spectrum
  falls off smoothly with frequency. The largest excess of the log-magnitude spectrum over its own
  radial average, in the band 12..60 cycles per 128 px, of the centre of the door's face patch
  (edge.door.quality.face_patch, 150x150 grey).
* :func:`border_lines` and :func:`enclosing_sides`: a phone's bezel or a card's paper edge is a
  long straight edge beside the face on three or four sides, at a place that stays the same
  relative to the face from frame to frame (a rider in front of a door frame has at most two).
* :func:`glare_area`: a screen's or a glossy print's glare is a large saturated, colourless
  region over the face; a skin highlight is a small one (forehead, nose).
* :func:`face_saturation`: a face shown on a screen (tint, glare, limited gamut) is less
  saturated than a lit face.

What each cue measured on genuine footage and on the synthetic attacks is in the docstrings and
in bench/pad_cues.py; the synthetic screens and prints are our own renders (bench/pad.py), so the
detection rates are an upper bound of what real screens and prints will give.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from edge.faces.geometry import Rect

N = 128
_Y, _X = np.mgrid[-N // 2 : N // 2, -N // 2 : N // 2]
_R = np.hypot(_X, _Y).astype(int)
_COUNT = np.maximum(np.bincount(_R.ravel()), 1)
_BAND = (_R >= 12) & (_R <= 60)
_WINDOW = (np.hanning(N)[:, None] * np.hanning(N)[None]).astype(np.float32)

#: Sides of the face in :func:`border_lines`' order.
SIDES = ("left", "top", "right", "bottom")
#: Track decisions measured at zero false refusals on the shipped genuine footage (bench/pad_cues.py).
BEZEL_SIDES = 3  # enclosing_sides(...) at least this: a card or a phone around the face
GLARE_AREA = 0.07  # median glare_area at least this: glare over the face
MAX_SATURATION = 50.0  # median face_saturation at most this: a washed-out face on a screen


def moire_peak(grey: np.ndarray) -> float:
    """The largest isolated spectral peak of a face patch (>= 128x128 grey), in log-magnitude units.

    Measured (bench/pad_cues.py): genuine footage per-clip medians 1.55-2.66, frames <= 3.26;
    synthetic phone screens and video replays 3.5-4.5 (median); synthetic halftone prints ~1.75.
    """
    h, w = grey.shape[:2]
    if h < N or w < N:
        raise ValueError(f"moire_peak needs a patch of at least {N}x{N}, got {w}x{h}")
    top, left = (h - N) // 2, (w - N) // 2
    g = grey[top : top + N, left : left + N].astype(np.float32)
    g = (g - g.mean()) * _WINDOW
    m = np.log1p(np.abs(np.fft.fftshift(np.fft.fft2(g))))
    profile = np.bincount(_R.ravel(), m.ravel()) / _COUNT
    return float((m - profile[_R])[_BAND].max())


def _box(rgb: np.ndarray, rect: Rect) -> np.ndarray:
    h, w = rgb.shape[:2]
    return rgb[max(rect.top, 0) : min(rect.bottom + 1, h), max(rect.left, 0) : min(rect.right + 1, w)]


def border_lines(rgb: np.ndarray, rect: Rect, max_tilt: float = 25.0) -> np.ndarray:
    """The nearest long straight edge beside the face on each side, for one RGB frame.

    Returns 4 numbers in :data:`SIDES` order: where the edge crosses the line through the face
    centre, in face widths (left, right) or face heights (top, bottom) from the centre; NaN where
    there is none. An edge counts when it is a Hough segment at least 0.8 face sizes long, within
    ``max_tilt`` degrees of the side's direction, outside the face box and alongside it (within
    2.5 face widths left and right, 2 face heights above, 2.5 below).
    """
    img_h, img_w = rgb.shape[:2]
    fw, fh = rect.width, rect.height
    cx, cy = (rect.left + rect.right) / 2, (rect.top + rect.bottom) / 2
    x0, x1 = max(0, int(rect.left - 2.5 * fw)), min(img_w, int(rect.right + 2.5 * fw))
    y0, y1 = max(0, int(rect.top - 2 * fh)), min(img_h, int(rect.bottom + 2.5 * fh))
    out = np.full(4, np.nan)
    if x1 - x0 < 8 or y1 - y0 < 8:
        return out
    grey = cv2.cvtColor(np.ascontiguousarray(rgb[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
    edges = cv2.Canny(cv2.GaussianBlur(grey, (5, 5), 1.2), 40, 120)
    segments = cv2.HoughLinesP(
        edges, 1, np.pi / 180, 40, minLineLength=int(0.8 * min(fw, fh)), maxLineGap=max(3, int(0.08 * fh))
    )
    if segments is None:
        return out
    tan = math.tan(math.radians(max_tilt))
    for xa, ya, xb, yb in segments[:, 0].astype(float) + [x0, y0, x0, y0]:
        dx, dy = xb - xa, yb - ya
        if abs(dx) <= tan * abs(dy):  # upright: a left or right edge beside the face's height
            if max(ya, yb) < rect.top or min(ya, yb) > rect.bottom:
                continue
            at = (xa + dx * (cy - ya) / dy - cx) / fw
            side = 0 if max(xa, xb) < rect.left else 2 if min(xa, xb) > rect.right else None
        elif abs(dy) <= tan * abs(dx):  # level: a top or bottom edge across the face's width
            if max(xa, xb) < rect.left or min(xa, xb) > rect.right:
                continue
            at = (ya + dy * (cx - xa) / dx - cy) / fh
            side = 1 if max(ya, yb) < rect.top else 3 if min(ya, yb) > rect.bottom else None
        else:
            continue
        if side is not None and not abs(out[side]) <= abs(at):  # NaN compares False: the first one
            out[side] = at
    return out


def enclosing_sides(lines: Sequence[np.ndarray], min_share: float = 0.6, max_wander: float = 0.15) -> int:
    """How many sides of the face (0-4) hold an edge that keeps its place relative to the face.

    ``lines``: :func:`border_lines` of the track's frames. A side counts when it has an edge in at
    least ``min_share`` of the frames and the edge's face-relative position wanders (median
    absolute deviation) at most ``max_wander`` face sizes. A card or phone gives 3-4 sides; the
    genuine footage at most 2 (a door frame beside the face, a wall edge above it). The stricter
    test, that the edge moves in the image *with* the face, could not be used: the detector box
    jitters as much (0.02-0.1 face sizes) as a hand-held card moves in 1.5 s.
    """
    if not lines:
        return 0
    at = np.array(lines, dtype=float).reshape(-1, 4)
    count = 0
    for side in range(4):
        found = at[~np.isnan(at[:, side]), side]
        if len(found) >= min_share * len(at) and np.median(np.abs(found - np.median(found))) <= max_wander:
            count += 1
    return count


def glare_area(rgb: np.ndarray, rect: Rect, bright: int = 225, grey_range: int = 30) -> float:
    """The largest glare region in the face box, as a share of the box (0-1), for one RGB frame.

    Glare pixels: every channel at least ``bright`` and channels within ``grey_range`` of each other
    (saturated and colourless); the region is their largest 8-connected component. Measured:
    genuine 45-frame medians <= 0.06 (the hand-held outdoor selfie, bright sky through the hair);
    the synthetic phone's glare spot only when it falls on the face (medians 0-0.52).
    """
    box = _box(rgb, rect).astype(np.int16)
    if box.size == 0:
        return 0.0
    lo, hi = box.min(axis=2), box.max(axis=2)
    mask = ((lo >= bright) & (hi - lo <= grey_range)).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    return float(stats[1:, cv2.CC_STAT_AREA].max() / mask.size) if n > 1 else 0.0


def face_saturation(rgb: np.ndarray, rect: Rect) -> float:
    """The median HSV saturation (0-255) of the face box, for one RGB frame.

    Measured: genuine 45-frame medians >= 57 (the selfie under an overcast sky; studio clips
    100-180); synthetic screens 11-71 (their tint, gamma and glare); synthetic prints 55-104, so it
    says nothing of prints.
    """
    box = _box(rgb, rect)
    if box.size == 0:
        return 255.0
    return float(np.median(cv2.cvtColor(np.ascontiguousarray(box), cv2.COLOR_RGB2HSV)[..., 1]))
