"""Constants and small builders that several test modules share (test modules never import each other)."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from edge.faces.match import Gallery

ROOT = Path(__file__).resolve().parents[1]
#: The face photos and clip, shipped as the demo's data (facefare/demo/data/README.md).
FIXTURES = ROOT / "facefare" / "demo" / "data"
CLIP = "short_hamilton_clip.mp4"
#: Real footage of a boarding with consent: a man, neutral (frames 0-15), then smiling (from ~18);
#: enrolled as "man" from another recording of him (RIDER_ENROLL_FRAME). footage/README.md.
RIDER_CLIP = "footage/single_face.mp4"
RIDER_ENROLL_FRAME = ("footage/face_noface.mov", 5)
#: One enrollment photo per rider of the clip tests.
ENROLL = {
    "lin": "lin_manuel_miranda.png",
    "obama": "obama.jpg",
    "biden": "biden.jpg",
    "rose": "rose_leslie1.jpg",
    "kit": "kit_harington1.jpeg",
    "alex": "alex_lacamoire2.jpg",
}


def write_man_photo(path: Path) -> Path:
    """The man of RIDER_CLIP as an enrollment photo file (a frame of another recording of him)."""
    import cv2

    from facefare.demo.photos import frame_of

    rgb = frame_of(FIXTURES / RIDER_ENROLL_FRAME[0], RIDER_ENROLL_FRAME[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def write_door_camera_file(path: Path) -> Path:
    """One video file for a bus camera: the Hamilton clip (Lin only talks), then RIDER_CLIP (the
    man smiles from neutral and is charged). Both are 640x360."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 29.97, (640, 360))
    for clip in (CLIP, RIDER_CLIP):
        cap = cv2.VideoCapture(str(FIXTURES / clip))
        while (got := cap.read())[0]:
            writer.write(got[1])
        cap.release()
    writer.release()
    return path


def fixture_identities() -> dict[str, str]:
    with open(FIXTURES / "MANIFEST.tsv", newline="") as fh:
        return {r["file"]: r["identity"] for r in csv.DictReader(fh, delimiter="\t")}


def make_gallery(templates: dict[str, np.ndarray], riders: list[str]) -> Gallery:
    return Gallery(riders, np.stack([templates[r] for r in riders]))


def reference(module: str) -> ModuleType:
    """Import a reference package (dlib, face_recognition, ...) of the 'reference' extra.

    On a developer's machine without it the test is skipped; in CI (``CI`` set) a missing
    reference package fails the test, so parity is never silently left unchecked.
    """
    if os.environ.get("CI"):
        import importlib

        return importlib.import_module(module)
    return pytest.importorskip(module)
