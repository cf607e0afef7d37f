"""Camera sources: where the bus pipeline's frames come from, chosen by the ``[camera]`` config.

Every source yields :class:`Frame` objects (index, ``ts`` seconds, RGB image, and the monotonic
and wall-clock times of capture) and answers :meth:`health` with ``(ok, detail)`` for the MQTT
heartbeat. One small class per backend, picked by ``type``:

========== ======================================= ==========================================
type       source                                  ``device`` / ``url``
========== ======================================= ==========================================
file       :class:`VideoFileSource` (demo, tests)   path of a video file
usb        :class:`OpenCVSource` (V4L2)             ``0`` or ``/dev/video0``
rtsp       :class:`OpenCVSource` (FFmpeg)           ``url = "rtsp://user:pass@host/stream"``
picamera2  :class:`Picamera2Source` (Pi camera)     camera number, ``0``
csi        :class:`GStreamerCSISource` (Jetson)     sensor id, ``0``
========== ======================================= ==========================================

A near-infrared camera is a second source: :class:`NirPairSource` (hardware.cameras.nir) pairs it
with the colour one and puts its picture on each frame as ``frame.nir``.

Live sources reopen a lost camera with exponential backoff (see :class:`Reconnect`); the bus's
MQTT publisher reads the flag through :func:`camera_status` (``BusSync(status_fields=...)``)::

    >>> from hardware.cameras import CameraConfig, open_source
    >>> src = open_source(CameraConfig(type="rtsp", url="rtsp://10.0.0.5/stream1"))
    >>> src.health()
    Health(ok=False, detail='rtsp rtsp://10.0.0.5/stream1: not started')
    >>> camera_status(src)
    {'camera': {'ok': False, 'detail': 'rtsp rtsp://10.0.0.5/stream1: not started'}}
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hardware.cameras.base import CameraError, Frame, FrameSource, Health, LiveSource, Reconnect
from hardware.cameras.file import VideoFileSource
from hardware.cameras.gstreamer import GStreamerCSISource, csi_pipeline
from hardware.cameras.nir import NirPairSource
from hardware.cameras.opencv import OpenCVSource
from hardware.cameras.picam import Picamera2Source

__all__ = [
    "CameraConfig", "CameraError", "Frame", "FrameSource", "GStreamerCSISource", "Health", "LiveSource",
    "NirPairSource", "OpenCVSource", "Picamera2Source", "Reconnect", "VideoFileSource", "camera_status",
    "csi_pipeline", "open_source",
]  # fmt: skip

CameraType = Literal["file", "usb", "rtsp", "picamera2", "csi"]


class CameraConfig(BaseModel):
    """The ``[camera]`` section: which camera the bus node reads and how it reconnects."""

    model_config = ConfigDict(extra="forbid")

    type: CameraType = Field("file", description="file, usb (V4L2), rtsp, picamera2 (Raspberry Pi) or csi (Jetson)")
    device: str = Field(
        "", description="file: video path; usb: index or /dev/video* path; picamera2 and csi: camera number"
    )
    url: str = Field("", description="rtsp: the stream URL (rtsp://user:password@host:554/path)")
    width: int = Field(1280, ge=16, le=8192, description="Requested frame width (live cameras)")
    height: int = Field(720, ge=16, le=8192, description="Requested frame height (live cameras)")
    fps: int = Field(30, ge=1, le=240, description="Requested frame rate (live cameras)")
    flip: int = Field(0, ge=0, le=7, description="csi: nvvidconv flip-method (2 = rotate 180 degrees)")
    realtime: bool = Field(False, description="file: deliver frames no faster than the file's frame rate")
    rtsp_transport: Literal["tcp", "udp"] = Field("tcp", description="rtsp: transport of the RTP stream")
    timeout_s: float = Field(5.0, gt=0, description="usb/rtsp: open and read timeout in seconds")
    reconnect: bool = Field(True, description="Reopen a camera that fails; false: fail at once")
    reconnect_initial_s: float = Field(0.5, gt=0, description="First wait before reopening; doubles each try")
    reconnect_max_s: float = Field(30.0, gt=0, description="Longest wait between reopening attempts")
    reconnect_max_attempts: int = Field(0, ge=0, description="Give up after this many failed opens in a row (0: never)")
    failed_reads: int = Field(10, ge=1, description="Reads in a row without a frame that count as a lost camera")
    stale_after_s: float = Field(5.0, gt=0, description="Health turns false when no frame came for this long")

    @model_validator(mode="after")
    def _target_given(self) -> CameraConfig:
        if self.type == "rtsp" and not self.url:
            raise ValueError("camera type 'rtsp' needs url")
        if self.type in ("picamera2", "csi") and self.device and not self.device.isdigit():
            raise ValueError(f"camera type {self.type!r} takes a camera number as device, got {self.device!r}")
        return self

    def reconnect_policy(self) -> Reconnect:
        return Reconnect(
            enabled=self.reconnect,
            initial_s=self.reconnect_initial_s,
            max_s=self.reconnect_max_s,
            max_attempts=self.reconnect_max_attempts,
            failed_reads=self.failed_reads,
            stale_after_s=self.stale_after_s,
        )


def open_source(cfg: CameraConfig, default_file: str | Path | None = None) -> FrameSource:
    """The frame source ``cfg`` describes (not yet opened: live cameras open when iterated).

    ``default_file`` is used for ``type = "file"`` when ``device`` is empty (the demo's clip).
    """
    policy = cfg.reconnect_policy()
    number = int(cfg.device) if cfg.device.isdigit() else 0
    if cfg.type == "file":
        path = cfg.device or default_file
        if not path:
            raise CameraError("camera type 'file' needs device = the path of a video file")
        return VideoFileSource(path, realtime=cfg.realtime)
    if cfg.type == "usb":
        return OpenCVSource(cfg.device or "0", "usb", cfg.width, cfg.height, cfg.fps, policy, cfg.timeout_s)
    if cfg.type == "rtsp":
        return OpenCVSource(
            cfg.url, "rtsp", cfg.width, cfg.height, cfg.fps, policy, cfg.timeout_s, rtsp_transport=cfg.rtsp_transport
        )
    if cfg.type == "picamera2":
        return Picamera2Source(number, cfg.width, cfg.height, cfg.fps, policy)
    if cfg.type == "csi":
        return GStreamerCSISource(number, cfg.width, cfg.height, cfg.fps, cfg.flip, policy)
    raise ValueError(f"unknown camera type {cfg.type!r}")  # unreachable: the config's Literal refuses it


def camera_status(source: FrameSource) -> dict[str, dict[str, object]]:
    """The heartbeat's ``camera`` field for ``source`` (detail cut to the protocol's 200 characters)."""
    ok, detail = source.health()
    return {"camera": {"ok": bool(ok), "detail": detail[:200]}}
