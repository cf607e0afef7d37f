"""``pip install .`` (a wheel, not editable) gives a working ``facefare``: every package, the dashboard's
page and the demo's photos and clip inside it, and nothing of the tests."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("models", "hardware", "edge", "cloud_sync", "enrollment", "facefare")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # A copy of the sources, so that no earlier in-tree build/ leaks stale files into the wheel.
    src = tmp_path_factory.mktemp("src") / "facefare"
    skip = shutil.ignore_patterns(".venv", ".git", "build", "artifacts", "*.egg-info", "__pycache__", ".*_cache")
    shutil.copytree(ROOT, src, ignore=skip)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
        check=True, capture_output=True, text=True, timeout=300, cwd=src,
    )  # fmt: skip
    (found,) = out.glob("facefare-*.whl")
    return found


def test_the_wheel_holds_every_package_and_its_data_and_no_tests(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {
        str(p.relative_to(ROOT)) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if "__pycache__" not in p.parts
    }
    assert sources <= names, sorted(sources - names)[:10]
    data = {str(p.relative_to(ROOT)) for p in (ROOT / "facefare/demo/data").rglob("*") if p.is_file()}
    static = {str(p.relative_to(ROOT)) for p in (ROOT / "cloud_sync/dashboard/static").iterdir()}
    assert "facefare/demo/data/short_hamilton_clip.mp4" in data
    assert data | static <= names, sorted((data | static) - names)
    assert not [n for n in names if n.startswith(("tests/", "bench/", "scripts/"))]
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "facefare = facefare.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_the_installed_wheel_runs_from_its_own_files(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, text=True, timeout=300)  # fmt: skip
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from facefare.demo import photos; from cloud_sync.dashboard import app; from facefare.cli import main;"
        "print(photos.FIXTURES); print(app.STATIC);"
        "print(photos.CLIP.is_file(), (app.STATIC / 'index.html').is_file())"
    )
    out = subprocess.run([sys.executable, "-I", "-c", probe, str(target)], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path, env={"PYTHONPATH": ""})  # fmt: skip
    assert out.returncode == 0, out.stderr
    fixtures, static, ok = out.stdout.splitlines()
    assert fixtures.startswith(str(target)) and static.startswith(str(target)), out.stdout
    assert ok == "True True"
    help_text = subprocess.run([sys.executable, "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                                "from facefare.cli import main; main(['--help'])", str(target)],
                               capture_output=True, text=True, timeout=60, cwd=tmp_path)  # fmt: skip
    assert "pay the bus fare with a smile" in help_text.stdout
