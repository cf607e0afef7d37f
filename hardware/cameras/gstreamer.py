"""Jetson CSI cameras (IMX219, IMX477...) through a GStreamer pipeline opened by OpenCV.

``nvarguscamerasrc`` delivers NV12 frames in GPU memory; ``nvvidconv`` converts and flips them
in hardware to BGRx, ``videoconvert`` drops the x, and ``appsink`` hands the newest frame to
OpenCV (``drop=true max-buffers=1``: the bus wants the freshest picture, not a backlog).

The OpenCV wheels on PyPI are built without GStreamer; on a Jetson use JetPack's OpenCV
(``python3-opencv``, built with GStreamer) by creating the venv with ``--system-site-packages``
and not installing ``opencv-python-headless`` over it (see docs/deployment.md).
"""

from __future__ import annotations

import cv2

from hardware.cameras.base import CameraError, Reconnect, VideoCaptureSource


def csi_pipeline(sensor_id: int = 0, width: int = 1280, height: int = 720, fps: int = 30, flip: int = 0) -> str:
    """The GStreamer pipeline string for a Jetson CSI camera, ending in an OpenCV appsink.

    >>> csi_pipeline(0, 1280, 720, 30)  # doctest: +NORMALIZE_WHITESPACE
    'nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM), width=1280, height=720, format=NV12,
     framerate=30/1 ! nvvidconv flip-method=0 ! video/x-raw, width=1280, height=720, format=BGRx !
     videoconvert ! video/x-raw, format=BGR ! appsink drop=true max-buffers=1 sync=false'
    """
    for key, value, low, high in (
        ("sensor_id", sensor_id, 0, 7), ("width", width, 16, 8192), ("height", height, 16, 8192),
        ("fps", fps, 1, 240), ("flip", flip, 0, 7),
    ):  # fmt: skip
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ValueError(f"{key} must be an integer in {low}..{high}, got {value!r}")
    return (
        f"nvarguscamerasrc sensor-id={sensor_id} ! "
        f"video/x-raw(memory:NVMM), width={width}, height={height}, format=NV12, framerate={fps}/1 ! "
        f"nvvidconv flip-method={flip} ! video/x-raw, width={width}, height={height}, format=BGRx ! "
        "videoconvert ! video/x-raw, format=BGR ! appsink drop=true max-buffers=1 sync=false"
    )


def opencv_has_gstreamer() -> bool:
    """True when this cv2 was built with GStreamer (JetPack's is; PyPI's wheels are not)."""
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line
    return False


class GStreamerCSISource(VideoCaptureSource):
    """A Jetson CSI camera: ``sensor_id``, ``width`` x ``height`` at ``fps``, ``flip`` (0-7, nvvidconv)."""

    def __init__(
        self,
        sensor_id: int = 0,
        width: int = 1280,
        height: int = 720,
        fps: int = 30,
        flip: int = 0,
        reconnect: Reconnect | None = None,
    ) -> None:
        super().__init__(reconnect)
        self.pipeline = csi_pipeline(sensor_id, width, height, fps, flip)
        self.name = f"csi {sensor_id}"

    def _open(self) -> None:
        if not opencv_has_gstreamer():
            raise CameraError(
                "camera type 'csi' needs OpenCV built with GStreamer (JetPack's python3-opencv); "
                "this cv2 has none (see docs/deployment.md, Jetson)"
            )
        cap = cv2.VideoCapture(self.pipeline, cv2.CAP_GSTREAMER)
        if not cap.isOpened():
            cap.release()
            raise OSError("the GStreamer pipeline did not start (is nvargus-daemon running, the camera seated?)")
        self._cap = cap
