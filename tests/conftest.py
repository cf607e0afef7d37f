"""Shared fixtures: the fixture photos, one verified set of converted models per run, the clip's
enrolled templates, and (from tests/servers.py) real Mosquitto and PostgreSQL servers.

Each folder is a kind of test, marked by its folder: ``unit`` (fast, no servers), ``parity``
(against dlib and face_recognition, the 'reference' extra), ``integration`` (real Mosquitto,
PostgreSQL, Chromium, processes killed mid-write) and ``e2e`` (whole processes, end to end).
Select with ``-m``, e.g. ``pytest -m unit``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import ENROLL, FIXTURES

pytest_plugins = ["tests.servers"]

KINDS = ("unit", "parity", "integration", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for kind in KINDS:
            if kind in parts:
                item.add_marker(getattr(pytest.mark, kind))


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The converted models of this machine (scripts/setup.sh makes them), converted here if absent."""
    from facefare.config import load_config
    from models.convert import convert_all
    from models.manifest import ArtifactError, verify

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


@pytest.fixture(scope="session")
def face_engine(models_dir: Path):
    """A face engine of its own as the bus runs it (BlazeFace, Face Mesh V2, 5-point landmarks)."""
    from edge.faces.engine import FaceEngine

    return FaceEngine(models_dir, detector="blazeface")


@pytest.fixture(scope="session")
def pad():
    """bench/pad.py, the presentation-attack corpus (bench/ is not a package the tests import)."""
    spec = importlib.util.spec_from_file_location("bench_pad", Path(__file__).parents[1] / "bench" / "pad.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_pad"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def templates(face_engine, faces_dir: Path) -> dict[str, np.ndarray]:
    """One template per rider of :data:`tests.helpers.ENROLL`, from their enrollment photo."""
    from edge.faces.images import load_image_file

    out = {}
    for rider, name in ENROLL.items():
        img = load_image_file(faces_dir / name)
        rect = max(face_engine.detect(img, 1, "hog"), key=lambda d: d.rect.area).rect
        out[rider] = face_engine.embed(face_engine.chips(img, face_engine.landmarks(img, [rect], "small")))[0]
    from facefare.demo.photos import frame_of
    from tests.helpers import RIDER_ENROLL_FRAME

    img = frame_of(faces_dir / RIDER_ENROLL_FRAME[0], RIDER_ENROLL_FRAME[1])  # the man of RIDER_CLIP
    rect = max(face_engine.detect(img, 1, "hog"), key=lambda d: d.rect.area).rect
    out["man"] = face_engine.embed(face_engine.chips(img, face_engine.landmarks(img, [rect], "small")))[0]
    return out
