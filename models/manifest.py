"""The conversion manifest: which artefacts the edge may load, and the check it makes before loading.

The manifest (``manifest.json`` beside the artefacts, written by :mod:`models.convert`) lists each
artefact's sha256 and size, its source and that file's sha256, its licence and the converter
version. :func:`verify` and :func:`verified_path` refuse an artefact that is missing or whose hash
differs. This module needs nothing but the standard library, so the bus imports it without the
conversion tools.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from models.artifacts import sha256_file

CONVERTER_VERSION = "2"
MANIFEST = "manifest.json"
#: Every artefact a complete conversion writes, in conversion order.
ARTIFACT_NAMES: tuple[str, ...] = (
    "face_embedder.onnx",
    "mmod_detector.onnx",
    "mmod_detector.json",
    "shape_predictor_5.npz",
    "shape_predictor_68.npz",
    "hog_detector.npz",
    "blazeface_short.onnx",
    "blazeface_full.onnx",
    "face_mesh_v2.onnx",
    "face_blendshapes.onnx",
)


class ArtifactError(RuntimeError):
    """An artefact is missing, altered, or the manifest does not describe it."""


def default_models_dir() -> Path:
    """``$FACEFARE_MODELS__DIR``, else ``$XDG_CACHE_HOME/facefare/models`` (``~/.cache/facefare/models``)."""
    explicit = os.environ.get("FACEFARE_MODELS__DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "facefare" / "models"


def load_manifest(models_dir: Path) -> dict:
    path = Path(models_dir) / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"no {MANIFEST} in {models_dir}: run 'facefare models convert' first")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from exc
    if manifest.get("converter_version") != CONVERTER_VERSION:
        raise ArtifactError(
            f"{path} was written by converter version {manifest.get('converter_version')!r}, "
            f"this code needs {CONVERTER_VERSION!r}: run 'facefare models convert' again"
        )
    return manifest


def verify(models_dir: Path, names: list[str] | None = None) -> dict:
    """Check artefacts (all, or ``names``) against the manifest; raise :class:`ArtifactError` if not."""
    models_dir = Path(models_dir)
    manifest = load_manifest(models_dir)
    entries = manifest["artifacts"]
    wanted = names if names is not None else list(ARTIFACT_NAMES)
    problems = []
    for name in wanted:
        entry = entries.get(name)
        path = models_dir / name
        if entry is None:
            problems.append(f"{name}: not listed in the manifest")
        elif not path.is_file():
            problems.append(f"{name}: missing from {models_dir}")
        elif (digest := sha256_file(path)) != entry["sha256"]:
            problems.append(f"{name}: sha256 {digest[:16]}... differs from the manifest's {entry['sha256'][:16]}...")
    if problems:
        raise ArtifactError("model artefacts failed verification:\n  " + "\n  ".join(problems))
    return manifest


def verified_path(models_dir: Path, name: str) -> Path:
    """The path of artefact ``name`` after checking it against the manifest."""
    verify(models_dir, [name])
    return Path(models_dir) / name
