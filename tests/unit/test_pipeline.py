"""The door pipeline (edge.door.pipeline) and its parts: tracker, matcher, quality and smile gates.

The clip tests run the real models on facefare/demo/data/short_hamilton_clip.mp4 (~25 s).
"""

from __future__ import annotations

import itertools
import logging
from datetime import UTC, datetime

import numpy as np
import pytest

from edge.door.node import BusNode, NodeStats
from edge.door.pipeline import BusPipeline, PipelineConfig
from edge.door.quality import QualityConfig, assess, pose
from edge.door.smile import SmileConfig, SmileGate, SmileState
from edge.door.tracker import IouTracker, Track
from edge.faces.geometry import Rect, scale_rect
from edge.faces.images import load_image_file
from edge.faces.match import Gallery
from edge.fares.ledger import Ledger
from edge.fares.rules import FaresConfig
from facefare.demo.photos import frame_of
from hardware.cameras import Frame, VideoFileSource
from tests.helpers import CLIP, ENROLL, make_gallery

AT = datetime(2025, 3, 3, 8, 0, tzinfo=UTC)


def make_ledger() -> Ledger:
    return Ledger(":memory:", FaresConfig(routes={"1": 250}), bus_id="bus-test")


def charge_through_node(pipe: BusPipeline, ledger: Ledger, frames, feedback=lambda fb: None) -> NodeStats:
    """Every frame through the bus node, whose ledger thread is the only code that charges."""
    return BusNode(pipe, ledger, feedback=feedback, drop_frames=False, clock=lambda: AT).run(frames)


def fares_of(ledger: Ledger) -> list[str]:
    return [r[0] for r in ledger.db.execute("SELECT rider_id FROM fares").fetchall()]


# -- whole pipeline -------------------------------------------------------------------------


def test_static_repeated_frame_never_passes_smile_gate_nor_charges(face_engine, templates, faces_dir):
    img = load_image_file(faces_dir / "lin_manuel_miranda.png")  # the enrolled rider, smiling
    ledger = make_ledger()
    pipe = BusPipeline(face_engine, make_gallery(templates, list(ENROLL)))
    stats = charge_through_node(pipe, ledger, [Frame(i, i / 10, img.copy()) for i in range(12)])
    decisions = stats.decisions
    assert pipe.processed_frames == 12
    assert all(not st.armed for st in pipe.states.values())  # the smile gate never passed
    assert all(d.action != "charge" for d in decisions)
    assert [d.reason for d in decisions] == ["frozen"]  # frozen track: see the driver, once
    assert fares_of(ledger) == []


FOOTAGE = "footage"


def template_of(engine, img: np.ndarray) -> np.ndarray:
    rect = max(engine.detect(img, 0), key=lambda d: d.rect.area).rect
    return engine.embed(engine.chips(img, engine.landmarks(img, [rect], "small")))[0]


@pytest.fixture(scope="module")
def footage_templates(face_engine, faces_dir) -> dict[str, np.ndarray]:
    """The man of single_face.mp4, enrolled from another recording (face_noface.mov, neutral
    frame 5), and the three GRID speakers, each from their clip's first frame."""
    f = faces_dir / FOOTAGE
    return {
        "man": template_of(face_engine, frame_of(f / "face_noface.mov", 5)),
        **{f"grid_{n}": template_of(face_engine, frame_of(f / "grid" / f"{n}.mpg", 0))
           for n in ("bbaf2n", "lbbc2a", "swiz3n")},  # fmt: skip
    }


def test_rider_smiling_from_neutral_is_charged_once(face_engine, footage_templates, faces_dir):
    ledger = make_ledger()
    fed = []
    pipe = BusPipeline(face_engine, make_gallery(footage_templates, list(footage_templates)))
    stats = charge_through_node(pipe, ledger, VideoFileSource(faces_dir / FOOTAGE / "single_face.mp4"), fed.append)
    assert fares_of(ledger) == ["man"]
    [d] = stats.decisions
    assert d.action == "charge" and 18 <= d.frame_index <= 40  # the smile starts at ~18, is full from 21
    assert any(fb.message == "Smile to pay" for fb in fed if fb.decision is None)
    assert pipe.stage_ms.keys() >= {"detect"}


@pytest.mark.parametrize("clip", ["bbaf2n", "lbbc2a", "swiz3n"])
def test_enrolled_people_who_only_talk_are_not_charged(face_engine, footage_templates, faces_dir, clip):
    ledger = make_ledger()
    pipe = BusPipeline(face_engine, make_gallery(footage_templates, list(footage_templates)))
    stats = charge_through_node(pipe, ledger, VideoFileSource(faces_dir / FOOTAGE / "grid" / f"{clip}.mpg"))
    assert fares_of(ledger) == []
    assert all(d.action != "charge" for d in stats.decisions)
    assert all(not st.armed for st in pipe.states.values())  # talking never passes the smile gate


def test_unenrolled_face_is_never_charged(face_engine, footage_templates, faces_dir):
    ledger = make_ledger()
    others = [r for r in footage_templates if r != "man"]
    pipe = BusPipeline(face_engine, make_gallery(footage_templates, others))
    decisions = charge_through_node(pipe, ledger, VideoFileSource(faces_dir / FOOTAGE / "single_face.mp4")).decisions
    assert fares_of(ledger) == []
    assert decisions, "the smile gate should have passed and the face been refused"
    assert all(d.action != "charge" and d.rider_id is None for d in decisions)
    assert {d.reason for d in decisions} <= {"unknown", "ambiguous"}


def test_corrupt_frames_are_skipped_and_later_frames_processed(face_engine, templates, faces_dir, caplog):
    img = load_image_file(faces_dir / "obama_small.jpg")
    pipe = BusPipeline(face_engine, make_gallery(templates, ["lin"]))
    bad = [None, np.zeros((10, 10, 5), np.uint8), np.zeros((0, 0, 3), np.uint8), "not an image"]
    with caplog.at_level(logging.WARNING, logger="edge.door.pipeline"):
        for i, frame in enumerate(bad):
            assert pipe.process(frame, i / 10, i) == []
        list(pipe.run([Frame(10, 1.0, img), Frame(11, 1.1, None), Frame(12, 1.2, img)]))
    assert pipe.skipped_frames == 5
    assert pipe.processed_frames == 2
    assert sum("skipped" in r.getMessage() for r in caplog.records) == 5
    assert len(pipe.tracker.tracks) == 1  # the face was found after the bad frames


def test_clip_names_only_enrolled_people_or_refuses(face_engine, templates, faces_dir):
    ledger = make_ledger()
    fed = []
    pipe = BusPipeline(face_engine, make_gallery(templates, list(ENROLL)))
    decisions = charge_through_node(pipe, ledger, VideoFileSource(faces_dir / CLIP), fed.append).decisions
    assert pipe.processed_frames == 275
    for d in decisions:
        assert d.rider_id in (None, "lin"), d
        assert d.action == "charge" or d.rider_id is None
    assert len({d.track_id for d in decisions}) == len(decisions)  # once per track
    # Lin only talks (frames 145-190); the grin at 82-95 starts with a cut, with no neutral of its
    # own before it: nobody consents, nobody is charged (docs/thresholds.md)
    assert fares_of(ledger) == []
    assert all(not st.armed for st in pipe.states.values())
    assert any(fb.message == "Smile to pay" for fb in fed)


# -- camera ---------------------------------------------------------------------------------


def test_video_file_source_timestamps_and_rgb(faces_dir):
    frames = list(itertools.islice(VideoFileSource(faces_dir / CLIP), 5))
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]
    assert frames[0].ts == 0.0
    assert all(b.ts > a.ts for a, b in itertools.pairwise(frames))
    assert frames[1].ts == pytest.approx(1 / 29.97, rel=1e-3)
    assert frames[0].image.shape == (360, 640, 3) and frames[0].image.dtype == np.uint8
    with pytest.raises(FileNotFoundError):
        VideoFileSource(faces_dir / "no_such.mp4")


# -- units ----------------------------------------------------------------------------------


def test_tracker_keeps_ids_and_ends_lost_tracks():
    tr = IouTracker(min_iou=0.3, max_missed=2)
    a, b = Rect(0, 0, 99, 99), Rect(300, 0, 399, 99)
    seen, ended = tr.update([a, b], 0.0)
    ids = [t.id for t in seen]
    assert len(set(ids)) == 2 and ended == []
    seen, _ = tr.update([Rect(305, 2, 404, 101), Rect(5, 3, 104, 102)], 0.1)  # moved a little, order swapped
    assert [t.id for t in seen] == [ids[1], ids[0]]
    assert seen[1].hits == 2 and seen[1].age == pytest.approx(0.1)
    ended_ids = []
    for k in range(4):
        _, ended = tr.update([Rect(5, 3, 104, 102)], 0.2 + k / 10)
        ended_ids += [t.id for t in ended]
    assert ended_ids == [ids[1]]
    seen, _ = tr.update([Rect(600, 0, 699, 99)], 1.0)
    assert seen[0].id not in ids  # a new face is a new track


def test_matcher_distance_and_margin():
    e = np.eye(4, dtype=np.float32)
    g = Gallery(["a", "a", "b"], np.stack([e[0], e[1], e[2]]))
    m = g.match(e[0] * 0.9)
    assert m.rider_id == "a" and m.distance == pytest.approx(0.1, abs=1e-5)
    assert m.margin == pytest.approx(np.hypot(0.9, 1.0) - 0.1, abs=1e-5)  # to rider b, not a's other template
    amb = g.match((e[0] + e[2]) / 2)
    assert amb.margin == pytest.approx(0.0, abs=1e-6)
    assert Gallery(["a"], e[:1]).match(e[1]).margin == float("inf")
    assert Gallery([], np.zeros((0, 4))).match(e[0]).rider_id is None


def test_pipeline_refuses_ambiguous_and_distant_matches():
    cfg = PipelineConfig(match_threshold=0.5, min_margin=0.1)
    pipe = BusPipeline.__new__(BusPipeline)
    pipe.cfg = cfg
    from edge.faces.match import Match

    assert pipe._accepts(Match("a", 0.4, 0.2))
    assert not pipe._accepts(Match("a", 0.4, 0.05))  # too close to another rider
    assert not pipe._accepts(Match("a", 0.55, 1.0))  # too far
    assert not pipe._accepts(Match(None, float("inf"), float("inf")))


def _chip(level: int = 128, texture: bool = True) -> np.ndarray:
    rng = np.random.default_rng(0)
    chip = np.full((150, 150, 3), level, np.int16)
    if texture:
        chip += rng.integers(-40, 40, (150, 150, 1), dtype=np.int16)
    return np.clip(chip, 0, 255).astype(np.uint8)


# 5-point landmarks of Lin Manuel Miranda in the clip (frame 150): image-right eye first.
FRONTAL = np.array([[278, 69], [263, 69], [225, 69], [241, 70], [253, 102]], np.float64)


def test_quality_pose_of_a_real_face_is_upright():
    dist, yaw, pitch = pose(FRONTAL)
    assert dist == pytest.approx(37.5, abs=0.5)
    assert abs(yaw) < 0.1 and 0.7 < pitch < 1.0


@pytest.mark.parametrize(
    ("landmarks", "chip", "rect", "reason"),
    [
        (FRONTAL, _chip(), Rect(200, 30, 320, 150), None),
        (FRONTAL / 3, _chip(), Rect(60, 10, 110, 50), "too_small"),
        (FRONTAL, _chip(), Rect(-5, 30, 320, 150), "outside_frame"),
        (FRONTAL + np.array([[0, 0]] * 4 + [[25, 0]]), _chip(), Rect(200, 30, 320, 150), "head_turned"),
        (FRONTAL + np.array([[0, 0]] * 4 + [[0, -25]]), _chip(), Rect(200, 30, 320, 150), "head_turned"),
        (FRONTAL, _chip(128, texture=False), Rect(200, 30, 320, 150), "blurred"),
        (FRONTAL, _chip(20), Rect(200, 30, 320, 150), "too_dark"),
        (FRONTAL, _chip(245), Rect(200, 30, 320, 150), "too_bright"),
    ],
)
def test_quality_reasons(landmarks, chip, rect, reason):
    q = assess(landmarks, chip, rect, (360, 640, 3), QualityConfig())
    if reason is None:
        assert q.ok, q
    else:
        assert reason in q.reasons, q
        assert q.message


def _grey(level: int = 100) -> np.ndarray:
    return _chip(level)[::3, ::3, 0].astype(np.int16)


def _feed(gate: SmileGate, st: SmileState, frames) -> list:
    """frames: (smile, jawOpen) per frame at 10 fps, each with a changing face."""
    return [gate.update(st, s, j, _grey(60 + 5 * i), i / 10) for i, (s, j) in enumerate(frames)]


def test_smile_gate_needs_a_rise_from_the_tracks_own_neutral():
    gate = SmileGate(SmileConfig())
    st = SmileState()
    results = _feed(gate, st, [(0.02, 0.02)] * 2 + [(0.85, 0.1)] * 3)
    assert [r.passed for r in results] == [False] * 4 + [True]
    assert results[-1].baseline == pytest.approx(0.02) and results[-1].state == "smile"
    # a rider whose neutral face already scores 0.7 passes with a rise to 0.95, not to 0.8
    st = SmileState()
    assert _feed(gate, st, [(0.7, 0.0)] * 2 + [(0.95, 0.05)] * 3)[-1].passed
    st = SmileState()
    assert not any(r.passed for r in _feed(gate, st, [(0.7, 0.0)] * 2 + [(0.8, 0.05)] * 5))
    # first seen already smiling: no neutral of its own, no consent
    st = SmileState()
    results = _feed(gate, st, [(0.9, 0.05)] * 8)
    assert not any(r.passed for r in results) and results[-1].state == "no_rise"


def test_smile_gate_refuses_talking_and_short_smiles():
    gate = SmileGate(SmileConfig())
    # the woman of new_face_video-90.mp4 talking, frames 80-88: smile 0.61-0.77 with jawOpen 0.30-0.43
    talk = [(0.0, 0.05), (0.615, 0.297), (0.648, 0.358), (0.640, 0.384), (0.767, 0.425), (0.750, 0.370),
            (0.683, 0.361), (0.0, 0.1)] * 3  # fmt: skip
    st = SmileState()
    results = _feed(gate, st, talk)
    assert not any(r.passed for r in results) and "talking" in {r.state for r in results}
    # a wide toothy grin (same clip, frames 239-242: smile 0.92-0.93, jawOpen 0.37-0.44) passes
    st = SmileState()
    assert _feed(gate, st, [(0.02, 0.02)] * 2 + [(0.917, 0.367), (0.926, 0.382), (0.930, 0.441)])[-1].passed
    # two smiling frames are not a held smile
    st = SmileState()
    assert not any(r.passed for r in _feed(gate, st, [(0.02, 0.02), (0.9, 0.1), (0.9, 0.1), (0.02, 0.02)]))


def test_smile_gate_refuses_identical_frames_and_bounds_attempts():
    gate = SmileGate(SmileConfig())
    st = SmileState()
    results = [gate.update(st, s, 0.0, _grey(), i / 10) for i, s in enumerate([0.0] * 5 + [0.9] * 5)]
    assert not any(r.passed for r in results)
    assert results[-1].frozen
    cfg = SmileConfig(max_attempts=2)
    gate, st = SmileGate(cfg), SmileState()
    st.attempts = 2  # two smiles already used without a charge
    assert _feed(gate, st, [(0.0, 0.0)])[-1].exhausted


def test_door_zone_largest_face_and_one_at_a_time():
    pipe = BusPipeline.__new__(BusPipeline)
    pipe.cfg = PipelineConfig(door_zone=(0.0, 0.0, 0.5, 1.0))
    big, similar, small, outside = (
        Track(1, Rect(10, 10, 109, 109), 0, 0),
        Track(2, Rect(150, 10, 245, 105), 0, 0),
        Track(3, Rect(150, 10, 189, 49), 0, 0),
        Track(4, Rect(400, 10, 599, 209), 0, 0),
    )
    shape = (360, 640, 3)
    assert pipe._door_face([small, big, outside], shape) is big  # outside the zone, though largest
    assert pipe._door_face([big, similar], shape) == "crowded"
    assert pipe._door_face([outside], shape) is None
    assert scale_rect(Rect(10, 20, 30, 40), 0.5) == Rect(20, 40, 60, 80)


def test_mesh_quality_reasons_on_a_real_face(face_engine, faces_dir):
    """The bus's quality gate from Face Mesh V2 on a real frame, and on that frame made worse."""
    import cv2

    from edge.door.quality import assess_mesh, face_patch
    from edge.faces.mesh import blink, roi_from_points, roi_from_rect

    def quality(rgb):
        det = max(face_engine.detect(rgb, 0), key=lambda d: d.rect.area)
        face = face_engine.mesh.landmarks(rgb, roi_from_rect(det.rect, det.keypoints))
        face = face_engine.mesh.landmarks(rgb, roi_from_points(face.points))
        scores = face_engine.mesh.blendshapes(face.points)
        return assess_mesh(face.points, blink(scores), face_patch(rgb, det.rect), det.rect, rgb.shape, QualityConfig())

    rgb = frame_of(faces_dir / "footage" / "single_face.mp4", 5)  # frontal, neutral, well lit
    q = quality(rgb)
    assert q.ok, q
    assert abs(q.yaw) < 10 and abs(q.pitch) < 15 and abs(q.roll) < 10 and q.eye_distance > 60
    assert "too_dark" in quality((rgb * 0.15).astype(np.uint8)).reasons
    assert "blurred" in quality(cv2.GaussianBlur(rgb, (0, 0), 6)).reasons
    h, w = rgb.shape[:2]
    tilted = cv2.warpAffine(rgb, cv2.getRotationMatrix2D((w / 2, h / 2), 45, 1.0), (w, h))
    q = quality(tilted)
    assert "head_turned" in q.reasons and abs(abs(q.roll) - 45) < 10, q
    small = cv2.resize(rgb, (w // 4, h // 4))
    assert "too_small" in quality(small).reasons


def test_edge_detector_and_landmarks_config_drive_the_bus(models_dir, faces_dir, templates, monkeypatch):
    """[edge] detector/landmarks reach the pipeline through facefare.wiring (they were ignored before)."""
    from facefare import wiring
    from facefare.config import load_config

    monkeypatch.setenv("FACEFARE_MODELS__DIR", str(models_dir))
    cfg = load_config(None, edge={"detector": "cnn", "landmarks": "large"})
    engine = wiring.face_engine(cfg)
    assert (engine.detector_name, engine.landmarks_name) == ("cnn", "large")
    used: list[str] = []
    for name in ("cnn", "large"):
        registry = "detector" if name == "cnn" else "landmark_model"
        real = getattr(engine, registry)
        monkeypatch.setattr(engine, registry, lambda n=None, real=real, used=used: used.append(n) or real(n))
    pipe = BusPipeline(engine, make_gallery(templates, ["lin"]), PipelineConfig(detect_regions="full"))
    frame = next(itertools.islice(VideoFileSource(faces_dir / CLIP), 120, 121))
    pipe.process(frame.image, frame.ts, frame.index)
    assert pipe.tracker.tracks, "the CNN detector found the face"
    assert engine.landmark_model().num_parts == 68
    assert used and all(n is None for n in used)  # the pipeline asked for the engine's configured models


def test_hamilton_grin_scores_as_a_smile_and_its_talking_never_as_consent(face_engine, faces_dir):
    """docs/thresholds.md: on the clip, the grin (frames 82-95) is a smile by the gate's measure;
    no talking frame (145-190) is a smiling frame (floor and smile - jawOpen)."""
    from edge.faces.mesh import INDEX, roi_from_points, roi_from_rect, smile

    cfg = SmileConfig()
    grin, talk = [], []
    for f in VideoFileSource(faces_dir / CLIP):
        if not (82 <= f.index <= 95 or 145 <= f.index <= 190):
            continue
        dets = face_engine.detect(f.image, 0)
        if not dets:
            continue
        d = max(dets, key=lambda d: d.rect.area)
        m = face_engine.mesh.landmarks(f.image, roi_from_rect(d.rect, d.keypoints))
        b = face_engine.mesh.blendshapes(face_engine.mesh.landmarks(f.image, roi_from_points(m.points)).points)
        (grin if f.index <= 95 else talk).append((smile(b), float(b[INDEX["jawOpen"]])))
    assert len(grin) == 14 and len(talk) > 40
    assert all(s >= cfg.smile_min and s - j >= cfg.smile_over_jaw for s, j in grin), grin
    assert not any(s >= cfg.smile_min and s - j >= cfg.smile_over_jaw for s, j in talk), talk
