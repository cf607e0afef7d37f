"""Motion-gated detection regions (edge.door.motion) and HOG scanning only those regions (edge.faces.hog).

The last test runs the real models on the shipped clip twice (~30 s): motion regions must give the
same boxes on every frame, and so the same decisions, as scanning every whole frame.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from edge.door.motion import MotionMask, RegionPlanner, expand, merge
from edge.door.pipeline import BusPipeline, PipelineConfig
from edge.faces.geometry import Rect
from edge.faces.hog import HogDetector
from edge.faces.images import load_image_file
from hardware.cameras import VideoFileSource
from tests.helpers import CLIP, ENROLL, make_gallery


def frame(square_at: tuple[int, int] | None = None, size: int = 40) -> np.ndarray:
    """A 360x640 grey frame with light noise-free texture, and a bright square at (x, y) if given."""
    img = np.full((360, 640, 3), 60, np.uint8)
    img[::16] = 70  # static texture: must never count as motion
    if square_at is not None:
        x, y = square_at
        img[y : y + size, x : x + size] = 230
    return img


def covers(outer: Rect, inner: Rect) -> bool:
    return (
        outer.left <= inner.left
        and outer.top <= inner.top
        and outer.right >= inner.right
        and outer.bottom >= inner.bottom
    )


# -- motion mask ----------------------------------------------------------------------------


def test_static_frames_have_no_motion():
    mask = MotionMask()
    assert all(mask.boxes(frame()) == [] for _ in range(10))


def test_a_moving_square_is_boxed_where_it_is():
    mask = MotionMask()
    planner = RegionPlanner(full_every=100, motion=MotionMask())
    mask.boxes(frame((100, 150)))
    planner.plan(frame((100, 150)), [])
    for step in range(1, 6):
        x, y = 100 + 12 * step, 150
        boxes = mask.boxes(frame((x, y)))
        assert boxes, step
        square = Rect(x, y, x + 39, y + 39)
        assert any(covers(b, Rect(x + 28, y, x + 39, y + 39)) for b in boxes), (step, boxes)  # its new part
        assert all(b.left > 40 and b.right < 250 for b in boxes)  # nothing far from it
        assert max(b.area for b in boxes) < 8 * square.area
        regions = planner.plan(frame((x, y)), [])
        assert regions is not None and any(covers(r, square) for r in regions), (step, regions)


# -- planner --------------------------------------------------------------------------------


def test_expand_and_merge():
    assert expand(Rect(300, 100, 339, 139), 0.5, 100, 640, 360) == Rect(200, 0, 439, 239)  # at least 100 px, clipped
    assert expand(Rect(100, 100, 399, 199), 0.5, 10, 640, 360) == Rect(0, 50, 549, 249)  # half its size
    boxes = [Rect(0, 0, 9, 9), Rect(5, 5, 19, 19), Rect(18, 18, 30, 30), Rect(100, 100, 110, 110)]
    assert sorted(merge(boxes), key=lambda r: r.left) == [Rect(0, 0, 30, 30), Rect(100, 100, 110, 110)]
    assert merge([]) == []


def test_planner_scans_whole_frames_on_the_first_every_n_and_when_regions_are_large():
    planner = RegionPlanner(full_every=4, margin=0.5, min_margin=20, max_fraction=0.6)
    plans = [planner.plan(frame(), []) for _ in range(9)]
    assert [p is None for p in plans] == [True, False, False, False, True, False, False, False, True]
    assert plans[1] == []  # a static frame and no track: nothing to scan
    track = Rect(300, 100, 379, 179)
    regions = planner.plan(frame(), [track])  # frame 9
    assert regions == [Rect(260, 60, 419, 219)]
    assert planner.plan(frame(), [Rect(0, 0, 500, 300)]) is None  # frame 10: would cover most of the frame
    assert planner.full_passes == 4


def test_planner_regions_cover_motion_and_tracks():
    planner = RegionPlanner(full_every=100)
    assert planner.plan(frame((100, 150)), []) is None
    track = Rect(500, 20, 579, 99)
    regions = planner.plan(frame((112, 150)), [track])
    assert regions is not None and len(regions) == 2
    assert any(covers(r, Rect(12, 50, 251, 289)) for r in regions)  # the square, widened by 100 px
    assert any(covers(r, track) for r in regions)


def test_config_validates_motion_settings():
    assert PipelineConfig().detect_regions == "motion"
    with pytest.raises(ValidationError):
        PipelineConfig(detect_regions="sometimes")
    with pytest.raises(ValidationError):
        PipelineConfig(full_detect_every=0)
    with pytest.raises(ValidationError):
        PipelineConfig(max_region_fraction=1.5)


# -- HOG on regions -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hog(models_dir: Path) -> HogDetector:
    return HogDetector(models_dir / "hog_detector.npz")


def test_regions_find_the_whole_image_boxes_once(hog: HogDetector, faces_dir: Path):
    img = load_image_file(faces_dir / "kit_with_rose.jpg")
    full = hog.detect(img)
    assert len(full) == 2
    kit = max(full, key=lambda d: d.rect.area)
    r = kit.rect
    around = Rect(r.left - 60, r.top - 60, r.right + 60, r.bottom + 60)
    shifted = Rect(r.left - 30, r.top - 90, r.right + 90, r.bottom + 30)  # overlaps ``around``
    assert hog.detect(img, regions=[around, shifted]) == [kit]  # the same box and score, reported once
    assert hog.detect(img, regions=[Rect(0, 450, 200, 690)]) == []  # no face there
    h, w = img.shape[:2]
    assert hog.detect(img, regions=[Rect(0, 0, w - 1, h - 1)]) == full
    small = load_image_file(faces_dir / "obama_small.jpg")
    sh, sw = small.shape[:2]
    assert hog.detect(small, 1, regions=[Rect(0, 0, sw - 1, sh - 1)]) == hog.detect(small, 1)


def test_windows_in_a_region_score_as_in_the_whole_image(hog: HogDetector, faces_dir: Path):
    img = load_image_file(faces_dir / "two_people.jpg")[::2, ::2].copy()
    planes = [np.ascontiguousarray(img[:, :, c]) for c in range(3)]
    whole = hog._scan(planes, -2.0)  # adjusted: many windows, not just faces
    rng = np.random.default_rng(0)
    h, w = img.shape[:2]
    checked = 0
    for _ in range(4):
        x, y = int(rng.integers(-40, w - 100)), int(rng.integers(-40, h - 100))
        region = Rect(x, y, x + int(rng.integers(90, 300)), y + int(rng.integers(90, 250)))
        part = hog._scan(planes, -2.0, [region])
        for key, score in part.items():
            # the same sum, reduced in another order by BLAS: equal to float32 rounding
            assert whole[key] == pytest.approx(score, rel=1e-6, abs=1e-6), (region, key)
        checked += len(part)
    assert checked > 50


# -- the clip -------------------------------------------------------------------------------


def test_clip_decisions_and_boxes_with_motion_regions_equal_whole_frames(models_dir, templates, faces_dir):
    from edge.faces.engine import FaceEngine

    hog_engine = FaceEngine(models_dir, detector="hog")  # motion regions are a HOG feature
    frames = list(VideoFileSource(faces_dir / CLIP))
    runs = {}
    for mode in ("full", "motion"):
        pipe = BusPipeline(
            hog_engine, make_gallery(templates, list(ENROLL)), PipelineConfig(detect_regions=mode)
        )
        boxes: list[list[Rect]] = []
        detect = pipe._detect
        pipe._detect = lambda rgb, detect=detect, boxes=boxes: boxes.append(detect(rgb)) or boxes[-1]
        decisions = [
            (d.track_id, d.frame_index, d.action, d.rider_id, d.reason)
            for f in frames
            for d in pipe.process(f.image, f.ts, f.index)
        ]
        runs[mode] = (decisions, pipe.tracker._next_id - 1, boxes, pipe.regions)
    (full_dec, full_tracks, full_boxes, _), (dec, tracks, boxes, planner) = runs["full"], runs["motion"]
    # Lin only talks: nobody passes the blendshape smile gate on this clip (docs/thresholds.md)
    assert all(d[2] != "charge" for d in full_dec)
    assert dec == full_dec
    assert tracks == full_tracks
    assert boxes == full_boxes  # every frame
    assert planner is not None and planner.full_passes < len(frames)  # some frames were scanned in regions only
