"""The screen and print cues of edge.door.pad_cues: below their thresholds on real footage of
genuine faces, above them on synthetic attacks rendered with bench/pad.py's own helpers.

The thresholds and what they cost are measured by bench/pad_cues.py; these tests only pin that a
genuine frame stays on the genuine side and a rendered screen or print crosses over.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.door.liveness import LivenessConfig
from edge.door.pad_cues import (
    BEZEL_SIDES,
    GLARE_AREA,
    MAX_SATURATION,
    border_lines,
    enclosing_sides,
    face_saturation,
    glare_area,
    moire_peak,
)
from edge.door.quality import face_patch

ROOT = Path(__file__).resolve().parents[2]
#: (clip, first frame, last frame) of footage with one genuine face in every frame
GENUINE = {"door": ("single_face.mp4", 0, 14), "selfie": ("new_face_video-90.mp4", 110, 124)}


def faces(engine, frames: list[np.ndarray]) -> list:
    rects = []
    for img in frames:
        dets = engine.detect(img, 0)
        assert dets, "the detector should find the face in every frame"
        rects.append(max(dets, key=lambda d: d.rect.area).rect)
    return rects


@pytest.fixture(scope="module")
def genuine(pad, face_engine) -> dict[str, tuple[list[np.ndarray], list]]:
    """15 frames of each clip and their faces; the single-frame tests use the 6th (single_face frame 5)."""
    out = {}
    for key, (name, lo, hi) in GENUINE.items():
        frames = pad.read_video(pad.FOOTAGE / name, lo, hi)
        out[key] = (frames, faces(face_engine, frames))
    return out


@pytest.fixture(scope="module")
def attacks(pad, face_engine) -> dict[str, tuple[list[np.ndarray], list]]:
    """10 frames of a hand-moved phone showing a photo (glare over the face) and of a hand-moved print."""
    bg = pad.backgrounds()[0].astype(np.float32)
    out = {}
    for key, render, seed in (
        ("screen", pad.phone_screen, 6),
        ("moire", pad.phone_screen, 3),
        ("print", pad.halftone_print, 2),
    ):
        rng = np.random.default_rng(seed)
        card = render(pad.london(1 + seed % 5)[0], rng)
        hand = pad.Hand.random(rng, scale=0.45)
        frames = [pad.composite(card, hand.homography(i / pad.FPS, card.shape[:2]), bg, rng) for i in range(10)]
        out[key] = (frames, faces(face_engine, frames))
    return out


def median(cue, frames, rects) -> float:
    return float(np.median([cue(img, rect) for img, rect in zip(frames, rects, strict=True)]))


@pytest.mark.parametrize("clip", list(GENUINE))
def test_genuine_frames_stay_below_every_threshold(genuine, clip):
    frames, rects = genuine[clip]
    img, rect = frames[5], rects[5]
    assert moire_peak(face_patch(img, rect)) < LivenessConfig().screen_peak
    assert glare_area(img, rect) < GLARE_AREA
    assert face_saturation(img, rect) > MAX_SATURATION
    assert enclosing_sides([border_lines(img, rect)]) < BEZEL_SIDES


def test_a_door_frame_beside_a_genuine_face_is_not_a_bezel(genuine):
    frames, rects = genuine["door"]
    lines = [border_lines(img, rect) for img, rect in zip(frames, rects, strict=True)]
    assert enclosing_sides(lines) == 2  # the door's two uprights, no edge above or below the face
    assert np.isnan(np.array(lines)[:, [1, 3]]).all()


@pytest.mark.parametrize("attack", ["screen", "print"])
def test_a_hand_moved_phone_or_print_is_enclosed(attacks, attack):
    frames, rects = attacks[attack]
    assert enclosing_sides([border_lines(img, rect) for img, rect in zip(frames, rects, strict=True)]) >= BEZEL_SIDES


def test_glare_over_a_phone_and_its_washed_out_colour(attacks):
    frames, rects = attacks["screen"]
    assert median(glare_area, frames, rects) >= GLARE_AREA
    assert median(face_saturation, frames, rects) <= MAX_SATURATION


def test_a_phone_screen_shows_moire_but_a_print_does_not(attacks):
    peak = LivenessConfig().screen_peak
    assert median(lambda img, rect: moire_peak(face_patch(img, rect)), *attacks["moire"]) >= peak
    assert median(lambda img, rect: moire_peak(face_patch(img, rect)), *attacks["print"]) < peak


def test_a_print_is_not_refused_for_glare_or_colour(attacks):
    """What the cues cannot do: the synthetic print has neither glare nor a washed-out colour."""
    frames, rects = attacks["print"]
    assert median(glare_area, frames, rects) < GLARE_AREA
    assert median(face_saturation, frames, rects) > MAX_SATURATION
