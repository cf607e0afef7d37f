"""A near-infrared camera beside the colour one: the second source of the presentation-attack defence.

The door's colour camera and a NIR camera (no IR-cut filter, an 850 nm illuminator; parts in
docs/deployment.md) look at the same door. :class:`NirPairSource` reads both and yields the colour
:class:`Frame` with the NIR picture taken closest in time as ``frame.nir`` (grey ``uint8``, H x W),
or ``nir=None`` when the two are more than ``max_skew_s`` apart or the NIR camera gave nothing.
The door pipeline then requires the face it follows in colour to be found in NIR at the same place
(edge.door.liveness, ``[liveness] nir``): a phone or tablet screen emits no 850 nm light, so a face
shown on it is absent in NIR.

Both sources are any :class:`FrameSource` (two USB cameras, two Pi cameras on a Compute Module or a
Pi 5, a video pair for tests). The pair is read in lockstep; the NIR image is converted to grey.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace

import cv2
import numpy as np

from hardware.cameras.base import Frame, FrameSource, Health

log = logging.getLogger(__name__)


def to_grey(image: np.ndarray | None) -> np.ndarray | None:
    """A NIR frame as grey ``uint8`` (NIR cameras deliver grey or a 3-channel copy of it)."""
    if image is None:
        return None
    if image.ndim == 3:
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return image


class NirPairSource:
    """The colour source's frames, each with the NIR source's frame as ``nir``."""

    def __init__(self, colour: FrameSource, nir: FrameSource, max_skew_s: float = 0.05) -> None:
        if max_skew_s <= 0:
            raise ValueError(f"max_skew_s must be > 0, got {max_skew_s}")
        self.colour = colour
        self.nir = nir
        self.max_skew_s = max_skew_s
        self.unpaired = 0

    def __iter__(self) -> Iterator[Frame]:
        nir_frames = iter(self.nir)
        for frame in self.colour:
            other = next(nir_frames, None)
            if other is None or other.image is None or abs(other.mono - frame.mono) > self.max_skew_s:
                self.unpaired += 1
                if self.unpaired in (1, 10, 100) or self.unpaired % 1000 == 0:
                    log.warning("frame %d: no NIR frame within %.3f s (%d so far)", frame.index, self.max_skew_s,
                                self.unpaired)  # fmt: skip
                yield replace(frame, nir=None)
                continue
            yield replace(frame, nir=to_grey(other.image))

    def health(self) -> Health:
        c, n = self.colour.health(), self.nir.health()
        return Health(c.ok and n.ok, f"colour: {c.detail}; nir: {n.detail}")
