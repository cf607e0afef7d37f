"""The Raspberry Pi camera (CSI ribbon: Camera Module 2/3, HQ) through Picamera2 and libcamera.

Picamera2 is not on PyPI in a form that works outside Raspberry Pi OS; it comes from apt
(``sudo apt install python3-picamera2``) and the bus's virtual environment must be made with
``--system-site-packages`` to see it (``scripts/install-bus.sh --picamera2`` does both). It is
imported only when this source is opened, so every other machine runs without it.
"""

from __future__ import annotations

import cv2
import numpy as np

from hardware.cameras.base import CameraError, LiveSource, Reconnect

INSTALL_HINT = (
    "camera type 'picamera2' needs the picamera2 package: on Raspberry Pi OS run "
    "'sudo apt install python3-picamera2' and create the venv with --system-site-packages "
    "(scripts/install-bus.sh --picamera2 does both)"
)


class Picamera2Source(LiveSource):
    """Frames from Picamera2's main stream, ``width`` x ``height`` at ``fps``, as RGB."""

    def __init__(
        self,
        camera_num: int = 0,
        width: int = 1280,
        height: int = 720,
        fps: int = 30,
        reconnect: Reconnect | None = None,
    ) -> None:
        super().__init__(reconnect)
        self.camera_num = camera_num
        self.width, self.height, self.fps = width, height, fps
        self.name = f"picamera2 {camera_num}"
        self._cam = None

    def _open(self) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError as exc:
            raise CameraError(INSTALL_HINT) from exc
        cam = Picamera2(self.camera_num)
        try:
            # "RGB888" frames arrive as B, G, R bytes per pixel (libcamera's naming), as OpenCV expects.
            config = cam.create_video_configuration(
                main={"size": (self.width, self.height), "format": "RGB888"},
                controls={"FrameRate": float(self.fps)},
                buffer_count=2,
            )
            cam.configure(config)
            cam.start()
        except Exception:
            cam.close()
            raise
        self._cam = cam

    def _read(self) -> np.ndarray | None:
        assert self._cam is not None
        bgr = self._cam.capture_array("main")
        if bgr is None or bgr.size == 0:
            return None
        return cv2.cvtColor(bgr[:, :, :3], cv2.COLOR_BGR2RGB)

    def _close(self) -> None:
        if self._cam is not None:
            cam, self._cam = self._cam, None
            try:
                cam.stop()
            finally:
                cam.close()
