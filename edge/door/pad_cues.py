"""Image cues of a screen, used only to refuse: the spectral peak of a display's pixel grid (moire).

A phone or tablet is a grid of pixels; filmed by the door camera, the grid beats against the
camera's own sampling and leaves narrow, isolated peaks in the spectrum of the face patch (moire),
where a real face's spectrum falls off smoothly with frequency. :func:`moire_peak` is the largest
excess of the log-magnitude spectrum over its own radial average, in the band 12..60 cycles per
128 px, of the centre of the door's face patch (edge.door.quality.face_patch, 150x150 grey).

Measured (bench/pad.py, docs/presentation-attacks.md): genuine footage per frame 1.5-3.0 (the
hand-held outdoor selfie video is the highest), synthetic phone screens and video replays 3.5-4.5
(median), synthetic halftone prints 1.75: no separation for prints, so no print cue is used.
"""

from __future__ import annotations

import numpy as np

N = 128
_Y, _X = np.mgrid[-N // 2 : N // 2, -N // 2 : N // 2]
_R = np.hypot(_X, _Y).astype(int)
_COUNT = np.maximum(np.bincount(_R.ravel()), 1)
_BAND = (_R >= 12) & (_R <= 60)
_WINDOW = (np.hanning(N)[:, None] * np.hanning(N)[None]).astype(np.float32)


def moire_peak(grey: np.ndarray) -> float:
    """The largest isolated spectral peak of a face patch (>= 128x128 grey), in log-magnitude units."""
    h, w = grey.shape[:2]
    if h < N or w < N:
        raise ValueError(f"moire_peak needs a patch of at least {N}x{N}, got {w}x{h}")
    top, left = (h - N) // 2, (w - N) // 2
    g = grey[top : top + N, left : left + N].astype(np.float32)
    g = (g - g.mean()) * _WINDOW
    m = np.log1p(np.abs(np.fft.fftshift(np.fft.fft2(g))))
    profile = np.bincount(_R.ravel(), m.ravel()) / _COUNT
    return float((m - profile[_R])[_BAND].max())
