"""One object holding the bus's face models: detect, landmark, align and embed.

Models are loaded explicitly and lazily (nothing happens at import time), each after checking
its hash against the conversion manifest; :meth:`FaceEngine.verify_all` is what a bus node calls
at start so that it refuses to run on a missing or altered artefact.
"""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np

from edge.faces.align import face_chip
from edge.faces.backends import (
    DETECTORS,
    EMBEDDERS,
    LANDMARKS,
    MESHES,
    Embedder,
    FaceDetector,
    LandmarkModel,
    MeshModel,
    pick,
)
from edge.faces.geometry import Detection, Rect
from edge.faces.hog import HogDetector
from edge.faces.mmod import MmodDetector
from hardware.providers import make_session
from models.manifest import verified_path, verify

log = logging.getLogger(__name__)



class FaceEngine:
    """The face models, loaded on first use through the registries of :mod:`edge.faces.backends`.

    ``detector``, ``landmarks`` and ``embedder`` name the defaults (``[edge]`` in the config);
    :meth:`detect` and :meth:`landmarks` may name another registered model per call.
    """

    def __init__(
        self,
        models_dir: str | Path,
        provider: str = "cpu",
        threads: int = 2,
        trt_cache_dir: Path | None = None,
        *,
        detector: str = "hog",
        landmarks: str = "small",
        embedder: str = "dlib_resnet",
        mesh: str = "face_mesh_v2",
    ) -> None:
        self.models_dir = Path(models_dir)
        self.provider = provider
        self.threads = threads
        self.trt_cache_dir = trt_cache_dir or self.models_dir / "trt-cache"  # TensorRT engines, built once
        for registry, kind, name in ((DETECTORS, "detector", detector), (LANDMARKS, "landmark model", landmarks),
                                     (EMBEDDERS, "embedder", embedder), (MESHES, "mesh model", mesh)):  # fmt: skip
            pick(registry, kind, name)  # a wrong name fails here, not at the first face
        self.detector_name, self.landmarks_name, self.embedder_name = detector, landmarks, embedder
        self.mesh_name = mesh
        self._loaded: dict[tuple[str, str], object] = {}

    def verify_all(self) -> dict:
        """Check every artefact against the manifest; raises ``ArtifactError`` on any problem."""
        return verify(self.models_dir)

    # -- ModelFiles, for the backends' load functions --------------------------------------

    def path(self, name: str) -> Path:
        return verified_path(self.models_dir, name)

    def session(self, name: str):
        return make_session(self.path(name), self.provider, self.threads, cache_dir=self.trt_cache_dir)

    # -- models, loaded on first use ---------------------------------------------------------

    def _get(self, registry: dict, kind: str, name: str):
        key = (kind, name)
        if key not in self._loaded:
            self._loaded[key] = pick(registry, kind, name)(self)
        return self._loaded[key]

    def detector(self, name: str | None = None) -> FaceDetector:
        return self._get(DETECTORS, "detector", name or self.detector_name)

    def landmark_model(self, name: str | None = None) -> LandmarkModel:
        return self._get(LANDMARKS, "landmark model", name or self.landmarks_name)

    @property
    def mesh(self) -> MeshModel:
        """The dense-landmark and blendshape model (``[edge] mesh``)."""
        return self._get(MESHES, "mesh model", self.mesh_name)

    @property
    def embedder(self) -> Embedder:
        return self._get(EMBEDDERS, "embedder", self.embedder_name)

    @property
    def hog(self) -> HogDetector:
        return self.detector("hog")  # type: ignore[return-value]

    @property
    def mmod(self) -> MmodDetector:
        return self.detector("cnn")  # type: ignore[return-value]

    @cached_property
    def embedder_sha256(self) -> str:
        """Identifies the embedding model; templates made by another model must not be mixed."""
        return verify(self.models_dir, ["face_embedder.onnx"])["artifacts"]["face_embedder.onnx"]["sha256"]

    # -- stages ------------------------------------------------------------------------------

    def detect(
        self, rgb: np.ndarray, upsample: int = 0, model: str | None = None, *, regions: list[Rect] | None = None
    ) -> list[Detection]:
        """Faces found by ``model`` (default: this engine's detector); ``regions``: where to look."""
        return self.detector(model).detect(rgb, upsample, regions=regions)

    def landmarks(self, rgb: np.ndarray, rects: list[Rect], model: str | None = None) -> list[np.ndarray]:
        """Per face, an (n, 2) array of (x, y): n = 5 for ``small``, 68 for ``large``."""
        predictor = self.landmark_model(model)
        return [predictor.predict(rgb, r) for r in rects]

    def chips(self, rgb: np.ndarray, landmarks: list[np.ndarray]) -> np.ndarray:
        if not landmarks:
            return np.zeros((0, 150, 150, 3), np.uint8)
        return np.stack([face_chip(rgb, pts, size=150, padding=0.25) for pts in landmarks])

    def embed(self, chips: np.ndarray, num_jitters: int = 1, seed: int = 0) -> np.ndarray:
        """(N, 128) float32. With ``num_jitters`` > 1 each chip is also embedded in that many
        randomly shifted, rotated, scaled and mirrored copies (our own jitter, seeded so results
        repeat; not dlib's exact random draws) and the mean is returned."""
        if num_jitters < 1:
            raise ValueError("num_jitters must be at least 1")
        if num_jitters == 1 or len(chips) == 0:
            return self.embedder.embed(chips)
        rng = np.random.default_rng(seed)
        out = []
        for chip in chips:
            batch = np.stack([chip] + [_jitter(chip, rng) for _ in range(num_jitters - 1)])
            out.append(self.embedder.embed(batch).mean(axis=0))
        return np.stack(out).astype(np.float32)


def _jitter(chip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size = chip.shape[0]
    angle = rng.uniform(-3.0, 3.0)
    scale = rng.uniform(0.95, 1.05)
    shift = rng.uniform(-0.02, 0.02, size=2) * size
    m = cv2.getRotationMatrix2D((size / 2, size / 2), angle, scale)
    m[:, 2] += shift
    out = cv2.warpAffine(chip, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return out[:, ::-1] if rng.random() < 0.5 else out
