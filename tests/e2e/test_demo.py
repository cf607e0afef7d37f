"""The README's main job: the demo bus writes what a person can look at and charges only enrolled riders."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from click.testing import CliRunner

from facefare.cli import main
from facefare.demo.photos import ENROLL


def test_demo_bus(models_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FACEFARE_MODELS__DIR", str(models_dir))
    monkeypatch.setenv("FACEFARE_HOME", str(tmp_path / "home"))
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("demo_bus.mp4", "decisions.tsv", "contact_sheet.jpg", "summary.tsv"):
        assert (out / name).stat().st_size > 0, name
    riders = [r[0] for r in sqlite3.connect(out / "ledger.db").execute("SELECT rider_id FROM fares")]
    # the man of single_face.mp4 smiles from neutral and pays once; the GRID speakers (enrolled)
    # and Lin-Manuel Miranda (enrolled) only talk; new_face_video's people are not enrolled
    assert riders == ["man_single_face"]
    assert "charge" in result.output and "man_single_face" in result.output
    assert set(ENROLL) >= {"lin_manuel_miranda"}
