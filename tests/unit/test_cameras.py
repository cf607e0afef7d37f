"""Camera sources (hardware/cameras/): timestamps, corrupt frames, reconnect and health, config."""

from __future__ import annotations

import logging
import shutil
import socket
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from hardware.cameras import (
    CameraConfig,
    CameraError,
    Frame,
    GStreamerCSISource,
    OpenCVSource,
    Picamera2Source,
    Reconnect,
    VideoFileSource,
    csi_pipeline,
    open_source,
)

FPS = 10
FAST = dict(initial_s=0.01, max_s=0.05)


def write_clip(path: Path, frames: int = 6) -> Path:
    """An MJPEG AVI of ``frames`` grey frames, brightness 0, 40, 80, ... at 10 fps."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (64, 48))
    for i in range(frames):
        writer.write(np.full((48, 64, 3), i * 40, np.uint8))
    writer.release()
    return path


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    return write_clip(tmp_path / "clip.avi")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_video_file_frames_carry_file_and_clock_timestamps(clip: Path) -> None:
    before = time.time()
    src = VideoFileSource(clip)
    frames = list(src)
    assert [f.index for f in frames] == [0, 1, 2, 3, 4, 5]
    assert [f.ts for f in frames] == pytest.approx([i / FPS for i in range(6)])
    monos = [f.mono for f in frames]
    assert monos == sorted(monos)
    assert all(before <= f.wall <= time.time() for f in frames)
    assert frames[3].image is not None and frames[3].image.shape == (48, 64, 3)
    assert abs(float(frames[3].image.mean()) - 120) < 3
    assert src.health() == (True, "file clip.avi: ended after 6 frames")


def test_realtime_file_is_delivered_at_its_frame_rate(clip: Path) -> None:
    start = time.monotonic()
    list(VideoFileSource(clip, realtime=True))
    assert time.monotonic() - start >= 5 / FPS * 0.9


def test_a_corrupt_frame_is_yielded_as_none_with_a_warning(clip: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = bytearray(clip.read_bytes())
    jpegs = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    data[jpegs[2] : jpegs[2] + 200] = bytes(200)  # frame 2 loses its JPEG header
    clip.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="hardware.cameras"):
        frames = list(VideoFileSource(clip))
    assert [f.index for f in frames] == [0, 1, 2, 3, 4, 5]
    assert [f.image is None for f in frames] == [False, False, True, False, False, False]
    assert frames[2].ts == pytest.approx(0.2)
    assert abs(float(frames[3].image.mean()) - 120) < 3  # numbering stays aligned with the file
    assert "frame 2 could not be decoded" in caplog.text


def test_missing_video_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such video file"):
        VideoFileSource(tmp_path / "nope.mp4")


def test_rtsp_on_a_closed_port_is_unhealthy_and_gives_up(caplog: pytest.LogCaptureFixture) -> None:
    url = f"rtsp://bus:secret@127.0.0.1:{closed_port()}/stream"
    src = OpenCVSource(url, "rtsp", reconnect=Reconnect(max_attempts=3, **FAST), timeout_s=2)
    assert src.health().ok is False
    with caplog.at_level(logging.WARNING, logger="hardware.cameras"), pytest.raises(CameraError, match="3 attempt"):
        list(src)
    ok, detail = src.health()
    assert ok is False and "cannot open" in detail
    assert "secret" not in detail and "secret" not in caplog.text  # the password never reaches logs or MQTT
    assert caplog.text.count("retrying in") == 2


def test_a_stream_that_appears_and_disappears_reconnects_with_a_health_flag(clip: Path, tmp_path: Path) -> None:
    """The stream's file is missing at first (unhealthy, retrying), appears (frames, healthy),
    then vanishes (lost, reconnecting, unhealthy, gives up)."""
    live = tmp_path / "live.avi"
    src = OpenCVSource(str(live), "rtsp", reconnect=Reconnect(max_attempts=20, failed_reads=2, **FAST))
    seen: list[Frame] = []
    health_while_streaming = []
    timer = threading.Timer(0.15, shutil.copy, (clip, live))
    timer.start()
    with pytest.raises(CameraError, match="20 attempt"):
        for frame in src:
            seen.append(frame)
            health_while_streaming.append(src.health().ok)
            if frame.index == 0:
                live.unlink()  # the camera goes away; the opened capture still has its frames
    timer.join()
    assert [f.index for f in seen] == [0, 1, 2, 3, 4, 5]
    assert seen[0].ts >= 0.1  # live ts counts from the opening of the source, including the wait
    assert [f.ts for f in seen] == sorted(f.ts for f in seen)
    assert all(health_while_streaming)
    assert src.reconnects == 1
    ok, detail = src.health()
    assert ok is False and "cannot open" in detail


def test_health_turns_stale_without_frames(clip: Path) -> None:
    src = OpenCVSource(str(clip), "rtsp", reconnect=Reconnect(stale_after_s=0.05, **FAST))
    it = iter(src)
    next(it)
    assert src.health().ok is True
    time.sleep(0.1)
    ok, detail = src.health()
    assert ok is False and "no frame for" in detail
    src.close()
    assert list(it) == []  # close() ends the iteration at the next frame
    assert src.health() == (False, f"rtsp {clip}: closed")


def test_missing_usb_device_path() -> None:
    src = OpenCVSource("/dev/video-facefare-test", "usb", reconnect=Reconnect(max_attempts=2, **FAST))
    with pytest.raises(CameraError, match="no device /dev/video-facefare-test"):
        list(src)


def test_csi_pipeline_string() -> None:
    p = csi_pipeline(sensor_id=1, width=1920, height=1080, fps=30, flip=2)
    assert p.startswith("nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM), width=1920, height=1080,")
    assert "framerate=30/1" in p and "nvvidconv flip-method=2" in p
    assert p.endswith("appsink drop=true max-buffers=1 sync=false")
    for bad in (dict(flip=8), dict(fps=0), dict(width="1280; rm -rf /"), dict(sensor_id=True)):
        with pytest.raises(ValueError):
            csi_pipeline(**bad)


def test_backends_missing_here_fail_at_once_with_a_clear_error() -> None:
    pytest.importorskip("cv2")
    try:
        import picamera2  # noqa: F401
    except ImportError:
        with pytest.raises(CameraError, match="apt install python3-picamera2"):
            list(Picamera2Source(reconnect=Reconnect(**FAST)))
    if "GStreamer:                   NO" in cv2.getBuildInformation():
        with pytest.raises(CameraError, match="OpenCV built with GStreamer"):
            list(GStreamerCSISource(reconnect=Reconnect(**FAST)))


def test_open_source_follows_the_config(clip: Path) -> None:
    assert isinstance(open_source(CameraConfig(type="file", device=str(clip))), VideoFileSource)
    assert isinstance(open_source(CameraConfig(type="file"), default_file=clip), VideoFileSource)
    usb = open_source(CameraConfig(type="usb", device="/dev/video2", reconnect_max_attempts=4))
    assert isinstance(usb, OpenCVSource) and usb.kind == "usb" and usb.reconnect.max_attempts == 4
    assert isinstance(open_source(CameraConfig(type="rtsp", url="rtsp://h/s")), OpenCVSource)
    assert isinstance(open_source(CameraConfig(type="picamera2", device="1")), Picamera2Source)
    csi = open_source(CameraConfig(type="csi", flip=2))
    assert isinstance(csi, GStreamerCSISource) and "flip-method=2" in csi.pipeline
    with pytest.raises(CameraError, match="needs device"):
        open_source(CameraConfig(type="file"))
    with pytest.raises(ValidationError, match="needs url"):
        CameraConfig(type="rtsp")
    with pytest.raises(ValidationError):
        CameraConfig(type="gopro")


def test_camera_test_command_reports_frames_and_health(clip: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from facefare.cli import main

    env = {"FACEFARE_HOME": str(tmp_path), "FACEFARE_CAMERA__DEVICE": str(clip), "FACEFARE_CONFIG": ""}
    args = ["hardware", "camera-test", "-n", "4", "--save", str(tmp_path / "f.jpg")]
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 0, result.output
    assert "frames: 4 good, 0 undecodable" in result.output and "size 64x48" in result.output
    assert "health: ok" in result.output
    assert (tmp_path / "f.jpg").stat().st_size > 0
    env.update(FACEFARE_CAMERA__TYPE="usb", FACEFARE_CAMERA__DEVICE="/dev/video-none",
               FACEFARE_CAMERA__RECONNECT_MAX_ATTEMPTS="1")  # fmt: skip
    result = CliRunner().invoke(main, ["hardware", "camera-test"], env=env)
    assert result.exit_code == 1
    assert "health: NOT ok" in result.output and "no device /dev/video-none" in result.output


def test_camera_health_fits_the_mqtt_heartbeat(clip: Path) -> None:
    from cloud_sync.protocol import Heartbeat
    from hardware.cameras import camera_status

    src = OpenCVSource("rtsp://10.0.0.5/" + "x" * 300, "rtsp")
    beat = Heartbeat.model_validate({"outbox_backlog": 0, **camera_status(src)})
    assert beat.camera.ok is False and beat.camera.detail.endswith("x")
    playing = VideoFileSource(clip)
    list(playing)
    assert Heartbeat.model_validate({"outbox_backlog": 0, **camera_status(playing)}).camera.ok is True


def test_backoff_doubles_up_to_its_cap_even_after_days_of_retries() -> None:
    policy = Reconnect(initial_s=0.5, max_s=30)
    assert [policy.delay(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert policy.delay(100_000) == 30  # no float overflow after a long outage


def test_picamera2_source_against_a_stand_in_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Pi camera here: a stand-in ``picamera2`` module with Picamera2's calls checks our use of
    them (configuration asked for, B,G,R bytes turned into RGB, stop+close on loss, reconnect)."""
    import sys
    import types

    events: list[str] = []

    class FakePicamera2:
        opened = 0

        def __init__(self, camera_num: int = 0) -> None:
            FakePicamera2.opened += 1
            self.reads = 0
            events.append(f"open {camera_num}")

        def create_video_configuration(self, main: dict, controls: dict, buffer_count: int) -> dict:
            assert main == {"size": (320, 240), "format": "RGB888"} and controls == {"FrameRate": 15.0}
            return {"main": main}

        def configure(self, config: dict) -> None:
            events.append("configure")

        def start(self) -> None:
            events.append("start")

        def capture_array(self, stream: str) -> np.ndarray:
            self.reads += 1
            if FakePicamera2.opened == 1 and self.reads > 2:
                raise RuntimeError("camera frontend timeout")  # the ribbon cable works loose
            bgr = np.zeros((240, 320, 3), np.uint8)
            bgr[..., 0] = 200  # blue byte first, as libcamera's RGB888 delivers it
            return bgr

        def stop(self) -> None:
            events.append("stop")

        def close(self) -> None:
            events.append("close")

    monkeypatch.setitem(sys.modules, "picamera2", types.SimpleNamespace(Picamera2=FakePicamera2))
    src = Picamera2Source(0, 320, 240, 15, reconnect=Reconnect(failed_reads=2, **FAST))
    frames = []
    for frame in src:
        frames.append(frame)
        if len(frames) == 4:
            src.close()
    assert len(frames) == 4 and frames[0].image.shape == (240, 320, 3)
    assert frames[0].image[0, 0].tolist() == [0, 0, 200]  # RGB: blue is last
    assert src.reconnects == 1
    assert events[:3] == ["open 0", "configure", "start"] and events.count("open 0") == 2
    assert events[-2:] == ["stop", "close"]
