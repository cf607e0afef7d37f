"""Video files as a camera: the demo's and the tests' frame source.

:class:`VideoFileSource` reads a file through ``cv2.VideoCapture`` and converts BGR -> RGB.
``ts`` is the frame's position in the file, ``index / fps`` (30 fps when the container gives no
usable rate); ``mono`` and ``wall`` are when the frame was read.

Corrupt frames: a frame whose decode failed (the capture reported a frame but returned no
pixels) is **yielded** as ``Frame(index, ts, image=None)`` with a WARNING log line, so the
consumer sees the gap and the frame numbering stays aligned with the file. The pipeline skips
such a frame (``edge.faces.images.as_rgb`` refuses ``None``) and goes on. The end of the file is
detected by ``CAP_PROP_FRAME_COUNT`` when the container gives one, otherwise by
``max_bad_frames`` decode failures in a row.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import cv2

from hardware.cameras.base import Frame, Health

log = logging.getLogger(__name__)


class VideoFileSource:
    """Frames of a video file. With ``realtime=True`` frames are delivered no faster than the
    file's frame rate, as a live camera would deliver them."""

    def __init__(self, path: str | Path, realtime: bool = False, max_bad_frames: int = 25) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such video file")
        self.realtime = realtime
        self.max_bad_frames = max_bad_frames
        self._health = Health(True, f"file {self.path.name}: not started")

    def health(self) -> Health:
        return self._health

    def __iter__(self) -> Iterator[Frame]:
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            self._health = Health(False, f"file {self.path.name}: cannot open")
            raise OSError(f"{self.path}: cannot open video")
        try:
            fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
            if not 0 < fps < 1000:
                fps = 30.0
            total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            start = time.monotonic()
            index = bad_run = 0
            self._health = Health(True, f"file {self.path.name}: playing")
            while True:
                ok, bgr = cap.read()
                ts = index / fps
                if not ok or bgr is None or bgr.size == 0:
                    if total <= 0 or index >= total:
                        break  # the end of the file
                    bad_run += 1
                    log.warning("%s: frame %d could not be decoded; yielded with image=None", self.path, index)
                    self._health = Health(False, f"file {self.path.name}: frame {index} could not be decoded")
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
                self._health = Health(True, f"file {self.path.name}: playing")
                yield Frame(index, ts, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                index += 1
            self._health = Health(True, f"file {self.path.name}: ended after {index} frames")
        finally:
            cap.release()
