"""Camera sources: where the bus pipeline's frames come from.

A :class:`FrameSource` is an iterable of :class:`Frame` objects. Every frame carries its index
(0, 1, 2, ... in capture order, counting frames that could not be decoded) and a timestamp ``ts``
in seconds. ``image`` is an RGB ``uint8`` array of shape (H, W, 3).

Corrupt frames: :class:`VideoFileSource` **yields** a frame whose decode failed (the capture
reported a frame but returned no pixels) as ``Frame(index, ts, image=None)`` with a WARNING
log line, so the consumer sees the gap and the frame numbering stays aligned with the file.
The pipeline skips such a frame (``edge.images.as_rgb`` refuses ``None``) and goes on. The end of
the file is detected by ``CAP_PROP_FRAME_COUNT`` when the container gives one, otherwise by
``max_bad_frames`` decode failures in a row.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Frame:
    index: int
    ts: float  # seconds: from the start of the file for video files
    image: np.ndarray | None  # RGB uint8 (H, W, 3); None when the frame could not be decoded


@runtime_checkable
class FrameSource(Protocol):
    def __iter__(self) -> Iterator[Frame]: ...


class VideoFileSource:
    """Frames of a video file read through ``cv2.VideoCapture``, converted BGR -> RGB.

    ``ts`` is the frame's position in the file, ``index / fps`` (30 fps when the container gives
    no usable rate). With ``realtime=True`` frames are delivered no faster than
    the file's frame rate, as a live camera would deliver them.
    """

    def __init__(self, path: str | Path, realtime: bool = False, max_bad_frames: int = 25) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such video file")
        self.realtime = realtime
        self.max_bad_frames = max_bad_frames

    def __iter__(self) -> Iterator[Frame]:
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            raise OSError(f"{self.path}: cannot open video")
        try:
            fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
            if not 0 < fps < 1000:
                fps = 30.0
            total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            start = time.monotonic()
            index = bad_run = 0
            while True:
                ok, bgr = cap.read()
                ts = index / fps
                if not ok or bgr is None or bgr.size == 0:
                    if total <= 0 or index >= total:
                        break  # the end of the file
                    bad_run += 1
                    log.warning("%s: frame %d could not be decoded; yielded with image=None", self.path, index)
                    yield Frame(index, ts, None)
                    if bad_run >= self.max_bad_frames:
                        log.warning("%s: %d bad frames in a row, stopping", self.path, bad_run)
                        break
                    index += 1
                    continue
                bad_run = 0
                if self.realtime:
                    delay = start + ts - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                yield Frame(index, ts, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                index += 1
        finally:
            cap.release()
