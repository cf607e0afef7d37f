"""Shared fixtures: the fixture photos and one verified set of converted models per test run."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "faces"

# Real Mosquitto and PostgreSQL servers started by the project's code (fixtures in tests/servers.py).
pytest_plugins = ["tests.servers"]


def fixture_identities() -> dict[str, str]:
    with open(FIXTURES / "MANIFEST.tsv", newline="") as fh:
        return {r["file"]: r["identity"] for r in csv.DictReader(fh, delimiter="\t")}


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The converted models of this machine (scripts/setup.sh makes them), converted here if absent."""
    from facefare.config import load_config
    from models.convert import ArtifactError, convert_all, verify

    path = load_config(os.environ.get("FACEFARE_CONFIG")).models.dir
    try:
        verify(path)
    except ArtifactError:
        path = tmp_path_factory.mktemp("models")
        convert_all(path, progress=False)
    return path


@pytest.fixture(scope="session")
def engine(models_dir: Path):
    from edge import faces

    return faces.use_models(models_dir)
