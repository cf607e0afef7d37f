"""The config object: defaults, TOML file, env overrides, and errors that name the key."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from facefare.config import ConfigError, FacefareConfig, example_toml, load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "facefare.example.toml"


def test_defaults() -> None:
    cfg = load_config(None)
    assert cfg.edge.detector == "blazeface"  # the bus default (issue 20); the face API keeps HOG
    assert cfg.edge.mesh == "face_mesh_v2"
    assert cfg.edge.landmarks == "small"


def test_example_file_loads() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.edge.threads >= 1


def test_example_file_lists_every_key_with_its_default() -> None:
    """facefare.example.toml is what 'facefare config example' prints: regenerate it after a config change."""
    assert EXAMPLE.read_text() == example_toml(), "run: facefare config example > facefare.example.toml"
    listed = tomllib.loads(EXAMPLE.read_text())
    for section, model in FacefareConfig.model_fields.items():
        keys = getattr(model.annotation, "model_fields", None)
        if keys is None:
            continue
        commented = {k for k in keys if f"# {k} = ..." in EXAMPLE.read_text()}
        assert set(listed[section]) | commented == set(keys), section
    assert load_config(EXAMPLE).model_dump(exclude={"data_dir", "models", "ledger"}) == load_config(None).model_dump(
        exclude={"data_dir", "models", "ledger"}
    )


def test_file_then_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "bus.toml"
    path.write_text('[edge]\nthreads = 4\ndetector = "hog"\n')
    monkeypatch.setenv("FACEFARE_EDGE__DETECTOR", "cnn")
    cfg = load_config(path)
    assert cfg.edge.threads == 4
    assert cfg.edge.detector == "cnn"


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[edge]\nthreads = 0\n", "edge.threads"),
        ('[edge]\ndetector = "sift"\n', "edge.detector"),
        ("[edge]\nupsample = 9\n", "edge.upsample"),
        ("[edge]\ncolour = 1\n", "edge.colour"),
        ('log_level = "LOUD"\n', "log_level"),
    ],
)
def test_invalid_value_names_key(tmp_path: Path, toml: str, key: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(path)


def test_invalid_env_names_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEFARE_EDGE__THREADS", "many")
    with pytest.raises(ConfigError, match="FACEFARE_EDGE__THREADS"):
        load_config(None)


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    (tmp_path / "broken.toml").write_text("[edge\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "broken.toml")


def test_cli_fails_at_start_with_key(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from facefare.cli import main

    path = tmp_path / "bad.toml"
    path.write_text("[edge]\nthreads = -1\n")
    result = CliRunner().invoke(main, ["--config", str(path), "models", "verify"])
    assert result.exit_code != 0
    assert "edge.threads" in result.output
