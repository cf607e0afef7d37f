"""The near-infrared second camera: pairing the sources, and the door's check that the face is there too."""

from __future__ import annotations

import random

import numpy as np
import pytest

from edge.door.liveness import Liveness, LivenessConfig, LivenessState
from edge.faces.images import load_image_file
from hardware.cameras import Frame, Health, NirPairSource


class ListSource:
    def __init__(self, frames: list[Frame], ok: bool = True) -> None:
        self.frames, self.ok = frames, ok

    def __iter__(self):
        return iter(self.frames)

    def health(self) -> Health:
        return Health(self.ok, "ok" if self.ok else "lost")


def test_pair_source_puts_the_nir_picture_on_the_colour_frame():
    colour = [Frame(i, i / 30, np.zeros((4, 6, 3), np.uint8), mono=100 + i / 30) for i in range(3)]
    nir = [
        Frame(0, 0.0, np.full((4, 6, 3), 7, np.uint8), mono=100.01),
        Frame(1, 0.0, np.full((4, 6), 9, np.uint8), mono=100 + 1 / 30),
        Frame(2, 0.0, np.full((4, 6), 9, np.uint8), mono=101.0),  # 0.93 s late: not the same moment
    ]
    src = NirPairSource(ListSource(colour), ListSource(nir, ok=False), max_skew_s=0.05)
    out = list(src)
    assert [f.index for f in out] == [0, 1, 2]
    assert out[0].nir.shape == (4, 6) and out[0].nir.dtype == np.uint8 and out[0].nir[0, 0] == 7
    assert out[1].nir[0, 0] == 9 and out[2].nir is None and src.unpaired == 1
    assert not src.health().ok and "nir: lost" in src.health().detail
    with pytest.raises(ValueError):
        NirPairSource(ListSource([]), ListSource([]), max_skew_s=0)


@pytest.fixture(scope="module")
def photo(faces_dir):
    return load_image_file(faces_dir / "obama.jpg")


def test_face_must_be_in_the_nir_picture_at_the_same_place(face_engine, photo):
    pad = Liveness(LivenessConfig(nir=True), random.Random(0))
    rect = max(face_engine.detect(photo), key=lambda d: d.rect.area).rect
    grey = photo.mean(2).astype(np.uint8)  # a face lit at 850 nm looks like a grey face
    assert pad.nir_agrees(face_engine.detect, grey, rect) is True
    dark = np.full_like(grey, 12)  # a phone screen in NIR: a dark slab
    assert pad.nir_agrees(face_engine.detect, dark, rect) is False
    moved = Liveness(LivenessConfig(nir=True, nir_map=(1, 0, 300, 0, 1, 0)))  # a face elsewhere does not count
    assert moved.nir_agrees(face_engine.detect, grey, rect) is False
    assert Liveness(LivenessConfig()).nir_agrees(face_engine.detect, grey, rect) is None  # check off
    assert pad.nir_agrees(face_engine.detect, None, rect) is None  # no NIR picture


@pytest.mark.parametrize("seen, refused", [([True] * 10, False), ([False] * 10, True), ([], True)])
def test_no_face_in_nir_refuses_when_the_smile_passes(seen, refused):
    cfg = LivenessConfig(nir=True, challenge=False, screen_cue=False)
    pad = Liveness(cfg, random.Random(0))
    st = LivenessState()
    points = np.zeros((478, 3))
    for i, s in enumerate(seen):
        pad.update(st, i / 30, points, True, False, nir_face=s)
    v = pad.update(st, 1.0, points, False, True, True)
    assert (v.refuse == "nir") is refused and v.accept is not refused


def test_config_takes_a_nir_camera_section():
    from facefare.config import FacefareConfig

    cfg = FacefareConfig(camera_nir={"type": "usb", "device": "1"}, liveness={"nir": True})
    assert cfg.camera_nir is not None and cfg.camera_nir.device == "1" and cfg.liveness.nir
    assert FacefareConfig().camera_nir is None and not FacefareConfig().liveness.nir
