"""The three kinds of face model, each behind one small interface, and the registries that pick them.

A backend is one file of this package that implements one interface and has a ``load`` function
taking :class:`ModelFiles`; the registries below map the config's name to that function
(``[edge] detector``, ``[edge] landmarks``, ``[edge] mesh``, ``[edge] embedder``). Adding a detector is one new
file and one line in :data:`DETECTORS`, in the way of Frigate's detector plugins.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edge.faces.geometry import Detection, Rect


class ModelFiles(Protocol):
    """What a backend's ``load`` gets: verified artefact paths and onnxruntime sessions."""

    def path(self, name: str) -> Path: ...

    def session(self, name: str) -> Any: ...


class FaceDetector(Protocol):
    """Finds faces: boxes in ``rgb``'s pixels, best first."""

    def detect(self, rgb: np.ndarray, upsample: int = 0, *, regions: Sequence[Rect] | None = None) -> list[Detection]:
        """``regions``: only faces inside these boxes are wanted (a detector may scan more)."""
        ...


class LandmarkModel(Protocol):
    """Places a face's landmarks: an (n, 2) array of (x, y) for one box."""

    num_parts: int

    def predict(self, rgb: np.ndarray, rect: Rect) -> np.ndarray: ...


class MeshModel(Protocol):
    """Dense landmarks (478 x, y, z) in a face region, and expression scores from them."""

    def landmarks(self, rgb: np.ndarray, roi: Any) -> Any: ...

    def blendshapes(self, points: np.ndarray) -> np.ndarray: ...


class Embedder(Protocol):
    """Turns aligned 150x150 RGB chips (N, 150, 150, 3) into (N, 128) float32 embeddings."""

    def embed(self, chips: np.ndarray) -> np.ndarray: ...


def _hog(files: ModelFiles) -> FaceDetector:
    from edge.faces.hog import load

    return load(files)


def _cnn(files: ModelFiles) -> FaceDetector:
    from edge.faces.mmod import load

    return load(files)


def _blazeface(files: ModelFiles) -> FaceDetector:
    from edge.faces.blazeface import load_short

    return load_short(files)


def _blazeface_full(files: ModelFiles) -> FaceDetector:
    from edge.faces.blazeface import load_full

    return load_full(files)


def _small(files: ModelFiles) -> LandmarkModel:
    from edge.faces.landmarks import load_small

    return load_small(files)


def _large(files: ModelFiles) -> LandmarkModel:
    from edge.faces.landmarks import load_large

    return load_large(files)


def _face_mesh_v2(files: ModelFiles) -> MeshModel:
    from edge.faces.mesh import load

    return load(files)


def _dlib_resnet(files: ModelFiles) -> Embedder:
    from edge.faces.embedder import load

    return load(files)


DETECTORS: dict[str, Callable[[ModelFiles], FaceDetector]] = {
    "hog": _hog,
    "cnn": _cnn,
    "mmod": _cnn,  # the name for dlib's CNN detector; "cnn" is face_recognition's
    "blazeface": _blazeface,
    "blazeface_full": _blazeface_full,
}
LANDMARKS: dict[str, Callable[[ModelFiles], LandmarkModel]] = {"small": _small, "large": _large}
MESHES: dict[str, Callable[[ModelFiles], MeshModel]] = {"face_mesh_v2": _face_mesh_v2}
EMBEDDERS: dict[str, Callable[[ModelFiles], Embedder]] = {"dlib_resnet": _dlib_resnet}


def pick(registry: dict[str, Callable[[ModelFiles], Any]], kind: str, name: str) -> Callable[[ModelFiles], Any]:
    """The loader registered as ``name``; a clear error naming the choices otherwise."""
    try:
        return registry[name]
    except KeyError:
        raise ValueError(f"unknown {kind} {name!r}; expected one of {', '.join(map(repr, registry))}") from None
