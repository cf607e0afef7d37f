"""One object holding the bus's face models: detect, landmark, align and embed.

Models are loaded explicitly and lazily (nothing happens at import time), each after checking
its hash against the conversion manifest; :meth:`FaceEngine.verify_all` is what a bus node calls
at start so that it refuses to run on a missing or altered artefact.
"""

from __future__ import annotations

import json
import logging
from functools import cached_property
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from edge.align import face_chip
from edge.embedder import FaceEmbedder
from edge.geometry import Detection, Rect
from edge.hog import HogDetector
from edge.landmarks import ShapePredictor
from edge.mmod import MmodDetector
from hardware.providers import make_session
from models.convert import verified_path, verify

log = logging.getLogger(__name__)

DetectorName = Literal["hog", "cnn"]
LandmarkName = Literal["small", "large"]


class FaceEngine:
    def __init__(
        self, models_dir: str | Path, provider: str = "cpu", threads: int = 2, trt_cache_dir: Path | None = None
    ) -> None:
        self.models_dir = Path(models_dir)
        self.provider = provider
        self.threads = threads
        self.trt_cache_dir = trt_cache_dir or self.models_dir / "trt-cache"  # TensorRT engines, built once

    @classmethod
    def from_config(cls, cfg) -> FaceEngine:  # cfg: facefare.config.FacefareConfig
        return cls(cfg.models.dir, cfg.edge.providers, cfg.edge.threads, trt_cache_dir=cfg.data_dir / "trt-cache")

    def verify_all(self) -> dict:
        """Check every artefact against the manifest; raises ``ArtifactError`` on any problem."""
        return verify(self.models_dir)

    def _path(self, name: str) -> Path:
        return verified_path(self.models_dir, name)

    def _session(self, name: str):
        return make_session(self._path(name), self.provider, self.threads, cache_dir=self.trt_cache_dir)

    # -- models, loaded on first use ---------------------------------------------------------

    @cached_property
    def hog(self) -> HogDetector:
        return HogDetector(self._path("hog_detector.npz"))

    @cached_property
    def mmod(self) -> MmodDetector:
        params = json.loads(self._path("mmod_detector.json").read_text())
        return MmodDetector(self._path("mmod_detector.onnx"), params, session=self._session("mmod_detector.onnx"))

    @cached_property
    def shape5(self) -> ShapePredictor:
        return ShapePredictor(self._path("shape_predictor_5.npz"))

    @cached_property
    def shape68(self) -> ShapePredictor:
        return ShapePredictor(self._path("shape_predictor_68.npz"))

    @cached_property
    def embedder(self) -> FaceEmbedder:
        return FaceEmbedder(self._session("face_embedder.onnx"))

    @cached_property
    def embedder_sha256(self) -> str:
        """Identifies the embedding model; templates made by another model must not be mixed."""
        return verify(self.models_dir, ["face_embedder.onnx"])["artifacts"]["face_embedder.onnx"]["sha256"]

    # -- stages ------------------------------------------------------------------------------

    def detect(self, rgb: np.ndarray, upsample: int = 0, model: DetectorName = "hog") -> list[Detection]:
        if model == "hog":
            return self.hog.detect(rgb, upsample)
        if model == "cnn":
            return self.mmod.detect(rgb, upsample)
        raise ValueError(f"unknown detector model {model!r}; expected 'hog' or 'cnn'")

    def landmarks(self, rgb: np.ndarray, rects: list[Rect], model: LandmarkName = "small") -> list[np.ndarray]:
        """Per face, an (n, 2) array of (x, y): n = 5 for ``small``, 68 for ``large``."""
        if model not in ("small", "large"):
            raise ValueError(f"unknown landmark model {model!r}; expected 'small' or 'large'")
        predictor = self.shape5 if model == "small" else self.shape68
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
