"""``facefare models convert --embedder FILE.dat``: the operator's own face ResNet, tied to its hash.

The real conversion of a whole set of models is tested in tests/parity/test_convert.py; here the
converters are replaced by cheap stand-ins to check which file becomes the embedder and what the
manifest records, and one real read shows that a file of another kind is refused.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from models import convert
from models.manifest import ArtifactError


@pytest.fixture
def fake_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for art in convert.ARTIFACTS:
        if art.source:
            (src / art.source).write_bytes(b"dlib " + art.source.encode())

    def fake(art):
        def run(source: Path | None, target: Path) -> dict:
            target.write_bytes(b"converted " + (source.read_bytes() if source else b"hog"))
            return {"outputs": {"embeddings": ["N", 128]}} if art.name == "face_embedder.onnx" else {}

        return run

    arts = tuple(convert.Artifact(a.name, a.source, fake(a), a.licence) for a in convert.ARTIFACTS)
    monkeypatch.setattr(convert, "ARTIFACTS", arts)
    return src


def test_default_embedder_is_dlibs(fake_sources: Path, tmp_path: Path) -> None:
    manifest = convert.convert_all(tmp_path / "out", fake_sources, progress=False)
    entry = manifest["artifacts"]["face_embedder.onnx"]
    assert entry["source"] == "dlib_face_recognition_resnet_model_v1.dat" and entry["licence"].startswith("CC0")


def test_operator_embedder_replaces_dlibs_and_changes_the_model_hash(fake_sources: Path, tmp_path: Path) -> None:
    default = convert.convert_all(tmp_path / "a", fake_sources, progress=False)
    own = tmp_path / "taguchi_face_recognition_resnet_model_v1.dat"
    own.write_bytes(b"another face resnet")
    runner = CliRunner()
    from facefare.cli import main

    out = tmp_path / "b"
    result = runner.invoke(main, ["models", "convert", "--source", str(fake_sources), "--out", str(out), "--quiet",
                                  "--embedder", str(own), "--embedder-licence", "MIT"])  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["artifacts"]["face_embedder.onnx"]
    assert entry["source"] == own.name and entry["licence"] == "MIT"
    assert entry["sha256"] != default["artifacts"]["face_embedder.onnx"]["sha256"]  # templates re-embed
    others = [n for n in manifest["artifacts"] if n != "face_embedder.onnx"]
    assert all(manifest["artifacts"][n]["sha256"] == default["artifacts"][n]["sha256"] for n in others)


def test_a_file_that_is_no_face_resnet_is_refused(tmp_path: Path) -> None:
    src = Path(convert.default_source_dir())
    wrong = tmp_path / "not_an_embedder.dat"
    shutil.copy(src / "shape_predictor_5_face_landmarks.dat", wrong)
    with pytest.raises(ArtifactError, match="not a dlib face ResNet"):
        convert.convert_all(tmp_path / "out", src, progress=False, embedder=wrong)
    assert not (tmp_path / "out" / "manifest.json").exists()
