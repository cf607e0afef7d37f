"""USB/V4L2 cameras and RTSP streams through OpenCV's ``VideoCapture``.

A USB camera is named by its index (``"0"``) or device path (``/dev/video0``,
``/dev/v4l/by-id/...``, which survives replugging) and opened with the V4L2 backend; an RTSP
(or HTTP, or file) URL is opened with FFmpeg, over TCP by default (buses are on lossy links),
with open and read timeouts so that a dead camera is noticed in seconds, not minutes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import cv2

from hardware.cameras.base import Reconnect, VideoCaptureSource


def _redact(url: str) -> str:
    """An URL without its password, for logs and the heartbeat.

    >>> _redact("rtsp://bus:secret@10.0.0.5:554/stream1")
    'rtsp://bus:***@10.0.0.5:554/stream1'
    """
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        creds, host = rest.split("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


class OpenCVSource(VideoCaptureSource):
    """``kind="usb"``: a V4L2 device (index or path); ``kind="rtsp"``: a stream URL through FFmpeg."""

    def __init__(
        self,
        target: str,
        kind: Literal["usb", "rtsp"] = "usb",
        width: int = 1280,
        height: int = 720,
        fps: int = 30,
        reconnect: Reconnect | None = None,
        timeout_s: float = 5.0,
        rtsp_transport: Literal["tcp", "udp"] = "tcp",
    ) -> None:
        super().__init__(reconnect)
        if not str(target).strip():
            raise ValueError(f"camera type {kind!r} needs a device or URL")
        self.target = str(target)
        self.kind = kind
        self.width, self.height, self.fps = width, height, fps
        self.timeout_ms = int(timeout_s * 1000)
        self.rtsp_transport = rtsp_transport
        self.name = f"{kind} {_redact(self.target)}"

    def _open(self) -> None:
        timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, self.timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, self.timeout_ms]
        if self.kind == "usb":
            device: int | str = int(self.target) if self.target.isdigit() else self.target
            if isinstance(device, str) and not Path(device).exists():
                raise FileNotFoundError(f"no device {device}")
            cap = cv2.VideoCapture(device, cv2.CAP_V4L2)
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"MJPG"))  # USB 2 bandwidth for 720p30
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
            cap.set(cv2.CAP_PROP_FPS, self.fps)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the freshest frame, not a queue of old ones
        else:
            os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", f"rtsp_transport;{self.rtsp_transport}")
            cap = cv2.VideoCapture(self.target, cv2.CAP_FFMPEG, timeouts)
        if not cap.isOpened():
            cap.release()
            raise OSError("VideoCapture did not open")
        self._cap = cap
