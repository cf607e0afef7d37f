"""The presentation-attack checks of edge.door.liveness on synthetic inputs (no models, milliseconds).

The measurement on real footage and the synthetic attack corpus is tests/unit/test_pad.py and
bench/pad.py.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from pydantic import ValidationError

from edge.door.liveness import RIGID, Liveness, LivenessConfig, LivenessState, flatness
from edge.door.pipeline import MESSAGES

FPS = 30.0
CFG = LivenessConfig(stable_s=0.3, delay_min_s=0.5, delay_max_s=2.0, reaction_min_s=0.15, reaction_max_s=1.5)
POINTS = np.zeros((478, 3))


def run(cfg: LivenessConfig, smile_at, seconds: float = 6.0, seed: int = 0, rise_frames: int = 3):
    """Feed frames; ``smile_at(prompt_at) -> ts`` says when the smile starts (None: never).

    A smile: ``rise_frames`` 'between' frames, then smiling frames; the gate passes on the third.
    Returns (verdicts, state)."""
    pad = Liveness(cfg, random.Random(seed))
    st = LivenessState()
    out = []
    start = None
    for i in range(int(seconds * FPS)):
        ts = i / FPS
        if start is None and st.prompt_at is not None:
            start = smile_at(st.prompt_at)
        k = -1 if start is None or ts < start else int(round((ts - start) * FPS))
        neutral = k < 0
        smiling = k >= rise_frames
        passed = k == rise_frames + 2
        v = pad.update(st, ts, POINTS, neutral, passed, smiling)
        out.append(v)
        if v.accept or v.refuse:
            break
        if v.note:  # the rider relaxes and waits for the next prompt
            start = None
    return out, st


def test_a_smile_that_reacts_to_the_prompt_is_accepted():
    verdicts, st = run(CFG, lambda p: p + 0.4)
    assert verdicts[-1].accept and verdicts[-1].refuse is None
    assert CFG.reaction_min_s <= st.onset - st.prompt_at <= CFG.reaction_max_s
    assert not verdicts[0].prompted  # "look at the camera" first


def test_the_prompt_comes_after_a_random_delay():
    delays = set()
    for seed in range(20):
        _, st = run(CFG, lambda p: None, seconds=3.0, seed=seed)
        assert CFG.delay_min_s <= st.delay <= CFG.delay_max_s
        assert st.prompt_at == pytest.approx(CFG.stable_s + st.delay, abs=1.5 / FPS)
        delays.add(round(st.delay, 2))
    assert len(delays) >= 15


@pytest.mark.parametrize(
    "when, note",
    [
        (lambda p: p - 0.1 if p else None, "already"),  # under way when the prompt came
        (lambda p: 0.1, "early"),  # a recording that smiles on its own schedule, before any prompt
        (lambda p: p + 0.05 if p else None, "early"),  # faster than a human can react
        (lambda p: p + 2.0 if p else None, "late"),
    ],
)
def test_smiles_not_reacting_to_the_prompt_do_not_count(when, note):
    pad = Liveness(CFG.model_copy(update={"max_challenges": 1}), random.Random(0))
    st = LivenessState()
    verdict = None
    start = None
    for i in range(int(8 * FPS)):
        ts = i / FPS
        if start is None:
            start = when(st.prompt_at)
        k = -1 if start is None or ts < start else int(round((ts - start) * FPS))
        verdict = pad.update(st, ts, POINTS, k < 0, k == 5, k >= 3)
        if verdict.note or verdict.accept or verdict.refuse:
            break
    assert verdict is not None and not verdict.accept
    assert verdict.note == note
    # a smile before the first prompt was due only schedules it; after a prompt the one challenge is spent
    assert verdict.refuse == ("challenge" if st.challenges >= 1 and verdict.prompted else None) or note == "early"


def test_a_swapped_photo_smiles_in_one_frame_and_does_not_count():
    verdicts, _ = run(CFG.model_copy(update={"max_challenges": 1}), lambda p: p + 0.4, rise_frames=0)
    assert verdicts[-1].note == "instant" and verdicts[-1].refuse == "challenge"


def test_a_smile_that_starts_in_time_but_reaches_full_too_late_does_not_count():
    # onset 0.4 s after the prompt, but 40 frames (1.33 s) of rise: full 1.7 s after it
    verdicts, _ = run(CFG.model_copy(update={"max_challenges": 1}), lambda p: p + 0.4, rise_frames=40)
    assert verdicts[-1].note == "late" and not verdicts[-1].accept


def test_a_missed_challenge_is_reissued_then_bounded():
    pad = Liveness(CFG.model_copy(update={"max_challenges": 2}), random.Random(1))
    st = LivenessState()
    notes = []
    for i in range(int(10 * FPS)):
        ts = i / FPS
        smile_now = st.prompt_at is not None and ts > st.prompt_at - 0.2  # always early: a replay
        k = int((ts - (st.prompt_at - 0.2)) * FPS) if smile_now else -1
        v = pad.update(st, ts, POINTS, k < 0, k == 5, k >= 3)
        if v.note:
            notes.append(v.note)
        if v.refuse:
            break
    assert v.refuse == "challenge" and len(notes) == 2 and st.challenges == 2
    assert MESSAGES["challenge"] and MESSAGES["wait"] and MESSAGES["flat"]


def _project(pts3: np.ndarray, yaw: float, pitch: float, shift: float) -> np.ndarray:
    cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
    r = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]]) @ np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    w = pts3 @ r.T + [shift, 0, 600.0]
    return 600 * w[:, :2] / w[:, 2:3] + [320, 240]


def _face(depth: float, rng: np.random.Generator) -> np.ndarray:
    """478 points; the RIGID ones a face-sized cloud whose z spans ``depth`` px (0: a photo)."""
    pts = np.zeros((478, 3))
    pts[RIGID, :2] = rng.uniform(-90, 90, (len(RIGID), 2))
    pts[RIGID[0], :2], pts[RIGID[3], :2] = (-70, -30), (70, -30)  # outer eye corners
    pts[RIGID, 2] = depth * (pts[RIGID, :2] ** 2).sum(1) / (2 * 90**2)  # a round head: the sides lie behind
    return pts


@pytest.mark.parametrize("depth, flat", [(0.0, True), (80.0, False)])
def test_flatness_tells_a_moving_plane_from_a_turning_head(depth, flat):
    rng = np.random.default_rng(0)
    face = _face(depth, rng)
    frames = []
    for i in range(45):
        t = i / FPS
        p2 = _project(face, math.radians(25 * math.sin(2 * t)), math.radians(15 * math.sin(3 * t)), 10 * t)
        frames.append(p2[RIGID] + rng.normal(0, 0.2, (len(RIGID), 2)))
    f = flatness(frames, CFG)
    assert f.pairs >= CFG.flat_min_pairs and f.flat is flat


def test_flatness_does_not_judge_a_face_that_does_not_move():
    rng = np.random.default_rng(0)
    face = _project(_face(80.0, rng), 0, 0, 0)[RIGID]
    f = flatness([face + rng.normal(0, 0.2, face.shape) for _ in range(45)], CFG)
    assert f.pairs == 0 and not f.flat


def test_config_rejects_inverted_windows():
    with pytest.raises(ValidationError):
        LivenessConfig(delay_min_s=2.0, delay_max_s=1.0)
    with pytest.raises(ValidationError):
        LivenessConfig(reaction_min_s=1.0, reaction_max_s=0.5)


def test_every_liveness_refusal_has_a_rider_message():
    from typing import get_args, get_type_hints

    from edge.door.liveness import Verdict

    literal = get_args(get_type_hints(Verdict)["refuse"])[0]
    reasons = get_args(literal)
    assert set(reasons) == {"flat", "screen", "nir", "challenge"}
    for reason in reasons:
        assert "driver" in MESSAGES[reason]
    assert MESSAGES["wait"] == "Look at the camera"
