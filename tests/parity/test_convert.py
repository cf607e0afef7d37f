"""Conversion: manifest contents, reproducible bytes, and refusal of tampered or missing artefacts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from facefare.cli import main
from models.artifacts import sha256_file
from models.convert import ARTIFACTS, convert_all, default_source_dir
from models.manifest import MANIFEST, ArtifactError, verify
from tests.helpers import reference


@pytest.fixture()
def models_copy(models_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "models"
    shutil.copytree(models_dir, dst)
    return dst


def test_manifest_lists_every_artefact(models_dir: Path) -> None:
    manifest = json.loads((models_dir / MANIFEST).read_text())
    assert set(manifest["artifacts"]) == {a.name for a in ARTIFACTS}
    for art in ARTIFACTS:
        entry = manifest["artifacts"][art.name]
        assert entry["sha256"] == sha256_file(models_dir / art.name)
        assert entry["bytes"] == (models_dir / art.name).stat().st_size
        assert entry["licence"]
        if art.source:
            assert entry["source_sha256"] == sha256_file(default_source_dir() / art.source)
    assert manifest["artifacts"]["face_embedder.onnx"]["meta"]["outputs"] == {"embeddings": ["N", 128]}
    assert "non-commercial" in manifest["artifacts"]["shape_predictor_68.npz"]["licence"] or "commercial" in (
        manifest["artifacts"]["shape_predictor_68.npz"]["licence"]
    )


@pytest.mark.reference
def test_conversion_is_reproducible(models_dir: Path, tmp_path: Path) -> None:
    reference("dlib")
    again = convert_all(tmp_path / "again", progress=False)
    first = json.loads((models_dir / MANIFEST).read_text())
    assert {k: v["sha256"] for k, v in again["artifacts"].items()} == {
        k: v["sha256"] for k, v in first["artifacts"].items()
    }


def test_verify_accepts_good_copy(models_copy: Path) -> None:
    assert set(verify(models_copy)["artifacts"]) == {a.name for a in ARTIFACTS}


def test_verify_refuses_tampered_artefact(models_copy: Path) -> None:
    path = models_copy / "face_embedder.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="face_embedder.onnx: sha256"):
        verify(models_copy)


def test_verify_refuses_missing_artefact(models_copy: Path) -> None:
    (models_copy / "hog_detector.npz").unlink()
    with pytest.raises(ArtifactError, match="hog_detector.npz: missing"):
        verify(models_copy)


def test_verify_refuses_missing_manifest(models_copy: Path) -> None:
    (models_copy / MANIFEST).unlink()
    with pytest.raises(ArtifactError, match="facefare models convert"):
        verify(models_copy)


def test_cli_verify_exit_codes(models_copy: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(main, ["models", "verify", "--dir", str(models_copy)])
    assert ok.exit_code == 0, ok.output
    (models_copy / "shape_predictor_5.npz").write_bytes(b"evil")
    bad = runner.invoke(main, ["models", "verify", "--dir", str(models_copy)])
    assert bad.exit_code == 1
    assert "shape_predictor_5.npz" in bad.output


def test_edge_refuses_to_start_on_tampered_model(models_copy: Path) -> None:
    from edge.faces.engine import FaceEngine

    (models_copy / "mmod_detector.onnx").write_bytes(b"not a model")
    engine = FaceEngine(models_copy)
    with pytest.raises(ArtifactError, match="mmod_detector.onnx"):
        engine.verify_all()
    with pytest.raises(ArtifactError):
        _ = engine.mmod
